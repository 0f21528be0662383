"""The two loader paths: tensors on the training device augmented there in batches (DeviceLoader), or torch
DataLoaders with worker processes. Both take their batches of indices from the same samplers (samplers.py)
and their augmentation from the same spec (augment.py).

The train loader can mix its batches (mix.py: mixup, cutmix), after the augmentation, on both paths.

Every random draw of an epoch derives from (seed, rank, epoch), so an epoch's batches are reproducible and a
resumed run sees the same data as an uninterrupted one: the device path seeds its generator so, and the
DataLoader path seeds each sample's augmentation, and each batch's mixing, from (seed, rank, epoch, position in
the epoch), whichever worker serves it: loader.num_workers cannot change a draw, and the global RNG is untouched.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .. import options as opt
from ..errors import EtfTrainError
from ..interrupt import STOP_SIGNALS
from .mix import NO_MIX, Mix, NoMix
from .registry import DataBundle
from .samplers import (
    ClassBalancedBatchSampler,
    MergedSingleton,
    ShardSampler,
    ShuffleSampler,
    StratifiedFoldsSampler,
    check_shard,
    epoch_seed,
)

MODES = ("auto", "device", "dataloader")
log = logging.getLogger("etf_train")


def loader_mode(bundle: DataBundle, mode: str) -> str:
    """Resolve loader.mode: auto -> device when the dataset is held in memory as tensors, else dataloader."""
    opt.choice("loader.mode", mode, MODES)
    in_memory = bundle.train_x is not None
    if mode == "device" and not in_memory:
        raise EtfTrainError(
            f"loader.mode=device needs a dataset held in memory as tensors, and dataset {bundle.name} reads image "
            "files; use loader.mode=dataloader (or auto)"
        )
    return mode if mode != "auto" else "device" if in_memory else "dataloader"


class DeviceLoader:
    """Batches mix(transform(x[idx]), y[idx]) from tensors already on one device: no workers, no per-batch copies.

    The random augmentation and mixing draw from a generator on the device seeded by (seed, rank, epoch).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_sampler: Sampler[list[int]],
        transform: Callable[[Tensor, torch.Generator], Tensor],
        *,
        seed: int = 0,
        rank: int = 0,
        mix: NoMix | Mix = NO_MIX,
    ):
        self.x, self.y, self.batch_sampler, self.transform, self.mix = x, y, batch_sampler, transform, mix
        self.seed, self.rank, self.epoch = seed, rank, 0

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = [torch.as_tensor(b, dtype=torch.long) for b in self.batch_sampler]
        if not batches:
            return
        order = torch.cat(batches).to(self.x.device)  # one copy per epoch: a blocking copy per batch would sync the GPU
        generator = torch.Generator(self.x.device).manual_seed(epoch_seed(self.seed, self.rank, self.epoch))
        for idx in order.split([len(b) for b in batches]):
            yield self.mix(self.transform(self.x[idx], generator), self.y[idx], generator)


def _seeded(seed: int, call: Callable, *args):
    """call(*args) with torch's CPU RNG seeded by `seed`, the caller's RNG state left as it was. (The CPU generator
    alone, as this runs per sample: torch.manual_seed also seeds every CUDA device, fork_rng copies their states.)"""
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        return call(*args)
    finally:
        torch.set_rng_state(state)


class _SampleSeeds(Sampler[list[tuple[int, int]]]):
    """Batches of (index, seed), seed = epoch_seed(seed, rank, epoch, position of the sample in the epoch)."""

    def __init__(self, batches: Sampler[list[int]], seed: int, rank: int):
        self.batches, self.seed, self.rank, self.epoch = batches, seed, rank, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        position = 0
        for batch in self.batches:
            yield [(i, epoch_seed(self.seed, self.rank, self.epoch, position + k)) for k, i in enumerate(batch)]
            position += len(batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        _set_sampler_epoch(self.batches, epoch)


class _SeededDataset(Dataset):
    """dataset[index] drawn under its sample seed; the seed rides along for the batch's collate."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        return _seeded(seed, self.dataset.__getitem__, index), seed


class _SeededCollate:
    """The collate (and mixing) of a batch under a seed of its first sample's seed (a class: workers pickle it)."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, samples: list):
        return _seeded(epoch_seed(samples[0][1], -1), self.collate, [sample for sample, _ in samples])


def ignore_stop_signals(_worker: int) -> None:
    """In a DataLoader worker: leave stop signals to the main process. Slurm's scancel and time limit, and systemd,
    signal the whole process group, and a worker that dies of SIGTERM fails the main process ("DataLoader worker ...
    killed by signal") before it can save; it saves at its next step boundary and the workers end with it. The
    signals are blocked from the worker's start (StopSafeLoader); one that comes meanwhile is dropped."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class StopSafeLoader(DataLoader):
    """A DataLoader whose workers start with the stop signals blocked, until ignore_stop_signals (their
    worker_init_fn) ignores them: torch's worker kills itself on a SIGTERM from any process but its parent, so a group
    signal between an epoch's start and worker_init_fn would kill a worker and the run with it."""

    def _get_iterator(self):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # forked workers inherit this thread's mask
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a signal held back meanwhile reaches this process now


class TrainDataLoader(StopSafeLoader):
    """A DataLoader whose every draw follows from (seed, rank, epoch, position) (see the module docstring)."""

    def __init__(self, dataset, batch_sampler, *, seed: int, rank: int, collate_fn: Callable, **options):
        # its own generator: the workers' base seed would otherwise be drawn from (and advance) the global RNG
        super().__init__(
            _SeededDataset(dataset),
            batch_sampler=_SampleSeeds(batch_sampler, seed, rank),
            collate_fn=_SeededCollate(collate_fn),
            generator=torch.Generator(),
            **options,
        )


def _set_sampler_epoch(batches, epoch: int) -> None:
    for sampler in (batches, getattr(batches, "sampler", None)):  # ClassBalancedBatchSampler, or over a ShuffleSampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return
    raise EtfTrainError("this loader has no sampler with set_epoch; build it with build_loaders")


def set_epoch(loader: DeviceLoader | TrainDataLoader, epoch: int) -> None:
    """Reseed the train loader's shuffle and augmentation for `epoch`, whichever path build_loaders gave it."""
    if isinstance(loader, DeviceLoader):  # it seeds its generator itself; TrainDataLoader's seeds are its sampler's
        loader.epoch = epoch
    _set_sampler_epoch(loader.batch_sampler, epoch)


def build_loaders(
    bundle: DataBundle,
    batch_size: int,
    *,
    eval_batch_size: int | None = None,
    class_balanced: bool = False,
    stratified_folds: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    mode: str = "auto",
    device: torch.device | str | None = None,
    mix: NoMix | Mix = NO_MIX,
) -> tuple[DeviceLoader | DataLoader, DeviceLoader | DataLoader, DeviceLoader | DataLoader]:
    """(train, test, eval_train) loaders for this rank: iterables of (x, y) batches with len().

    mode: "device" serves the bundle's tensors from `device` (default cpu) and augments them there in batches
    (num_workers and pin_memory do not apply); "dataloader" uses torch DataLoaders with num_workers workers;
    "auto" picks device when the bundle holds its splits as tensors. Both give the same batches of indices:
    train: shuffled from epoch_seed(seed, epoch) (`set_epoch(loader, epoch)`), sharded as DistributedSampler does (padding by
    wrapping, so ranks get equal sample and batch counts); class_balanced: ClassBalancedBatchSampler; stratified_folds:
    the authors' floor(N / B) stratified folds per epoch (StratifiedFoldsSampler).
    test / eval_train: in order, batches of eval_batch_size (default batch_size), each rank a disjoint unpadded
    shard (ShardSampler): sum statistics across ranks.
    mix (build_mix): how the train loader mixes its batches, which then carry soft labels (B, K); never test / eval_train.
    """
    opt.integer("batch_size", batch_size)
    eval_batch_size = opt.integer("eval_batch_size", batch_size if eval_batch_size is None else eval_batch_size)
    opt.integer("loader.num_workers", num_workers, 0)
    opt.boolean("loader.class_balanced", class_balanced)
    opt.boolean("loader.stratified_folds", stratified_folds)
    if class_balanced and stratified_folds:
        raise EtfTrainError(
            "loader.class_balanced and loader.stratified_folds are two ways to form batches: choose one"
        )
    check_shard(rank, world_size)
    if not isinstance(mix, NoMix) and len(bundle.in_shape) != 3:
        raise EtfTrainError(f"mixup and cutmix mix images, and dataset {bundle.name} has no image inputs: use mix=none")
    if class_balanced or stratified_folds:
        kind = ClassBalancedBatchSampler if class_balanced else StratifiedFoldsSampler
        batches = kind(bundle.train_targets, batch_size, seed=seed, rank=rank, world_size=world_size)
    else:
        batches = BatchSampler(
            ShuffleSampler(bundle.train, seed=seed, rank=rank, world_size=world_size), batch_size, drop_last=False
        )
    batches = MergedSingleton(batches)  # a last batch of one sample joins the one before (BatchNorm cannot take it)

    def in_order(n: int) -> BatchSampler:
        return BatchSampler(ShardSampler(n, rank, world_size), eval_batch_size, drop_last=False)

    if loader_mode(bundle, mode) == "device":
        if num_workers and rank == 0:
            log.warning(
                "loader.num_workers=%d has no effect: dataset %s is served from the device's memory "
                "(loader.mode=%s); set loader.mode=dataloader for worker processes",
                num_workers,
                bundle.name,
                mode,
            )
        device = torch.device("cpu" if device is None else device)
        x_train = bundle.train_x.to(device, memory_format=torch.contiguous_format)
        x_test = bundle.test_x.to(device, memory_format=torch.contiguous_format)
        y_train, y_test = bundle.train_targets.to(device), bundle.test_targets.to(device)
        plain = bundle.augment.plain().per_batch(device)
        return (
            DeviceLoader(x_train, y_train, batches, bundle.augment.per_batch(device), seed=seed, rank=rank, mix=mix),
            DeviceLoader(x_test, y_test, in_order(len(y_test)), plain),
            DeviceLoader(x_train, y_train, in_order(len(y_train)), plain),
        )

    common = dict(num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=ignore_stop_signals)
    train = TrainDataLoader(bundle.train, batches, seed=seed, rank=rank, collate_fn=mix.collate, **common)
    test, eval_train = (  # own generators: a base seed drawn from the global RNG per pass would move dropout's draws
        StopSafeLoader(
            ds,
            batch_sampler=in_order(len(ds)),
            persistent_workers=num_workers > 0,
            generator=torch.Generator(),
            **common,
        )
        for ds in (bundle.test, bundle.eval_train)
    )
    return train, test, eval_train
