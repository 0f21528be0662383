"""Batch samplers shared by both loader paths: shuffled or class-balanced training batches, sharded over ranks
like DistributedSampler, and disjoint in-order shards for evaluation."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DistributedSampler, Sampler

from ..errors import EtfTrainError


def epoch_seed(*parts: int) -> int:
    """A 63-bit seed from integers such as (seed, rank, epoch); unlike seed + epoch, (1, 0) and (0, 1) differ, so
    run seed=2 does not replay run seed=1's draws one epoch later."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


class ShuffleSampler(DistributedSampler):
    """DistributedSampler (a shuffle sharded over ranks, padded by wrapping) whose epoch-e permutation is seeded by
    epoch_seed(seed, e): DistributedSampler's own seed + e would give run seed=s+1 run seed=s's order one epoch
    earlier, replicates sharing all but one epoch's batches."""

    def __init__(self, dataset, *, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=epoch_seed(seed, 0))
        self.base_seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.seed, self.epoch = epoch_seed(self.base_seed, epoch), 0  # __iter__ seeds with self.seed + self.epoch


def check_shard(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise EtfTrainError(f"rank={rank!r}, world_size={world_size!r}: need integers with 0 <= rank < world_size")


class ShardSampler(Sampler[int]):
    """Positions rank, rank + world_size, ... in order: disjoint shards covering the data, no padding,
    so statistics summed across ranks count every sample exactly once (evaluation)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        check_shard(rank, world_size)
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Stratified batches: every batch is a window of one epoch-long sequence that cycles through the
    classes in a fixed (per-epoch random) order, taking each class's samples in a per-epoch random order.

    On balanced data each batch holds floor(B/K) or ceil(B/K) of every class; a class that runs out
    (imbalanced data) stops contributing. Shuffles are seeded by epoch_seed(seed, epoch) (call `set_epoch`).
    Sharding follows DistributedSampler: the sequence is padded by wrapping to a multiple of world_size,
    global step s hands batch s*world_size + rank to `rank`, and the final partial step is split
    evenly, so every rank gets the same number of samples and batches.
    """

    def __init__(self, targets: Tensor, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise EtfTrainError(f"batch_size={batch_size!r} must be an integer >= 1")
        check_shard(rank, world_size)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch = 0
        self.total = math.ceil(len(self.targets) / world_size) * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        """This epoch's interleaved sequence of all sample positions (before padding and sharding)."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        K, N = int(self.targets.max()) + 1, len(self.targets)
        perm = torch.randperm(N, generator=g)
        y, by_class = torch.sort(self.targets[perm], stable=True)
        grouped = perm[by_class]  # class-major, random within each class
        counts = torch.bincount(y, minlength=K)
        rank_in_class = torch.arange(N) - (torch.cumsum(counts, 0) - counts)[y]
        slot = torch.argsort(torch.randperm(K, generator=g))  # class c comes at slot[c] in every round
        return grouped[torch.argsort(rank_in_class * K + slot[y])]

    def _bounds(self) -> list[tuple[int, int]]:
        B, w = self.batch_size, self.world_size
        full = self.total // (B * w)
        bounds = [(s * B * w + self.rank * B, B) for s in range(full)]
        piece = (self.total - full * B * w) // w
        if piece:
            bounds.append((full * B * w + self.rank * piece, piece))
        return bounds

    def __iter__(self) -> Iterator[list[int]]:
        seq = self.order()
        seq = torch.cat([seq, seq[: self.total - len(seq)]]).tolist()
        for start, size in self._bounds():
            yield seq[start : start + size]

    def __len__(self) -> int:
        return len(self._bounds())


class StratifiedFoldsSampler(Sampler[list[int]]):
    """The authors' stratified batches (their nc/datasets.py; their nearest-ETF scripts only): each epoch splits the
    train set into F = floor(N / B) stratified folds (scikit-learn's StratifiedKFold, shuffled), and each fold is one
    batch, so a batch holds N/F >= B samples: on UFM-10 (N = 1000, B = 256) 3 batches of 333-334, against 4 for
    batch_size batches. Folds are seeded by epoch_seed(seed, epoch); under torchrun each rank takes every
    world_size-th sample of each fold."""

    def __init__(self, targets: Tensor, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise EtfTrainError(f"batch_size={batch_size!r} must be an integer >= 1")
        check_shard(rank, world_size)
        self.targets = torch.as_tensor(targets, dtype=torch.long).numpy()
        self.folds = max(1, len(self.targets) // batch_size)
        smallest = int(np.bincount(self.targets).min())
        if self.folds > 1 and smallest < self.folds:
            raise EtfTrainError(
                f"loader.stratified_folds: {self.folds} folds need at least {self.folds} samples of "
                f"every class, and one class has {smallest}; raise trainer.batch_size"
            )
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if self.folds == 1:
            order = np.random.default_rng(epoch_seed(self.seed, self.epoch)).permutation(len(self.targets))
            yield order[self.rank :: self.world_size].tolist()
            return
        from sklearn.model_selection import StratifiedKFold  # here: scikit-learn takes a second to import

        folds = StratifiedKFold(self.folds, shuffle=True, random_state=epoch_seed(self.seed, self.epoch) % 2**32)
        for _, fold in folds.split(np.zeros(len(self.targets)), self.targets):
            yield fold[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        return self.folds


class MergedSingleton(Sampler[list[int]]):
    """The batches of `batches`, with a last batch of one sample (N mod B = 1, e.g. dataset.limit_train=129 at batch
    128) merged into the batch before it: BatchNorm cannot normalise a single sample in training ("Expected more than
    1 value per channel"). Every rank of a shard has the same batch sizes, so ranks stay in step. `sampler` is what
    set_epoch reaches."""

    def __init__(self, batches: Sampler[list[int]]):
        self.batches = batches
        self.sampler = batches if hasattr(batches, "set_epoch") else getattr(batches, "sampler", None)

    def __iter__(self) -> Iterator[list[int]]:
        found = list(self.batches)
        if len(found) > 1 and len(found[-1]) == 1:
            found[-2:] = [list(found[-2]) + list(found[-1])]
        yield from found

    def __len__(self) -> int:
        n = len(self.batches)
        return n - 1 if n > 1 and len(list(self.batches)[-1]) == 1 else n
