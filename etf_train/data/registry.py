"""The dataset registry and the assembly of a `DataBundle` from what a registered dataset function returns.

A registered function returns `Splits` (raw train/test data, labels, the augmentation spec). The registry
wraps it into a builder taking that function's options plus the options every dataset takes
(`COMMON_OPTIONS`, written once in configs/config.yaml), which applies the long-tail subsample, the limits
and the augmentation switch and returns a `DataBundle`:

    train       items (x, y): x float (C, H, W), normalised, augmented when `augment`
                (ufm: x is the sample's position in `train`, a 0-dim long tensor); y from `train_targets`,
                which hold the label noise (`label_noise`) if any
    test        no augmentation, clean labels
    eval_train  the train samples, same order and labels, without augmentation (for the NC metrics)

Datasets held in memory also give their splits as tensors (`train_x` / `test_x`) for the device-resident
loader (loaders.py).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .. import options as opt
from ..errors import EtfTrainError
from ..registry import Registry
from .augment import Augment
from .noise import flip_labels
from .subsets import long_tail_counts, stratified_subset, take

log = logging.getLogger("etf_train")

# The options of every dataset, with their defaults (configs/config.yaml's `dataset:` node mirrors them).
COMMON_OPTIONS: dict[str, Any] = {
    "augment": True,
    "flip": True,
    "imbalance_ratio": 1.0,
    "limit_train": None,
    "limit_test": None,
    "split_seed": 0,
    "label_noise": 0.0,
}


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    eval_train: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    train_targets: Tensor  # (N_train,) long, labels of `train` and `eval_train` in order, label noise included
    test_targets: Tensor  # (N_test,) long, labels of `test` in order
    augment: Augment  # what `train` applies (crop and flip off when augment=false); test, eval_train: augment.plain()
    # The splits as tensors for the device path, rows in the order of `train` / `test`, before `augment`:
    # uint8 pixels or normalised floats (N, C, H, W), ufm positions (N,). None: the images are files (DataLoader only).
    train_x: Tensor | None
    test_x: Tensor | None
    name: str
    clean_targets: Tensor  # (N_train,) long, the train labels before label noise (train_targets when there is none)
    noisy: Tensor | None  # (N_train,) bool, where train_targets != clean_targets; None: label_noise=0
    class_names: tuple[str, ...] = ()  # (K,) names of the classes, in label order
    held_out: bool = True  # False: the test split is the train samples themselves (UFM)
    files: str | None = None  # image folders: which files the splits hold (Splits.files); None: fixed by the config

    @property
    def test_is_eval_train(self) -> bool:
        """The test split is eval_train itself, sample for sample and label for label (UFM without label noise or a
        test limit): one evaluation pass serves both."""
        return not self.held_out and self.noisy is None and len(self.test) == len(self.eval_train)

    def sizes(self) -> dict[str, int]:
        """K and the sample counts of the splits as served (after limits and the long tail): for reports."""
        return {"num_classes": self.num_classes, "train_samples": len(self.train), "test_samples": len(self.test)}

    def shot_counts(self, imbalance_ratio: float) -> Tensor | None:
        """Train samples per class, for the many/medium/few accuracies of a long-tailed train set (None otherwise),
        from the clean labels: label noise moves about p N labels across classes, so a tail class of 5 images
        would count its ~60 flipped-in labels and read as a many-shot class.  -> (K,) or None"""
        return torch.bincount(self.clean_targets, minlength=self.num_classes) if imbalance_ratio > 1 else None


@dataclass
class Splits:
    """What a registered dataset function returns.

    train: items (raw x, label), raw x as `Augment.per_sample` takes it (PIL image) or already the input
      tensor; None means there are no inputs: x is the sample's position in the train split and the test
      split is the train samples themselves (the unconstrained-features model; test and test_targets
      are then None too).
    tensors: (train x, test x), the same samples as `train` / `test` in order, as tensors before `augment`
      (uint8 pixels (N, C, H, W), or the float inputs); None: not held in memory (DataLoader path only).
    train_ops / eval_ops: dataset-specific PIL ops before the spec's crop and flip (image folders: resizing).
    """

    train: Dataset | None
    test: Dataset | None
    train_targets: Tensor  # (N_train,) long
    test_targets: Tensor | None  # (N_test,) long
    num_classes: int
    in_shape: tuple[int, ...]
    augment: Augment = Augment()
    tensors: tuple[Tensor, Tensor] | None = None
    train_ops: Sequence = ()
    eval_ops: Sequence = ()
    class_names: Sequence[str] | None = None  # in label order; None: the label itself
    # Datasets that are whatever a folder holds: "<n> train + <m> test files, sha256 <hash of paths and labels>", so
    # a resume or a comparison can tell when the folder's contents changed (the record holds it as dataset.files)
    files: str | None = None


DATASETS = Registry("dataset")


def register_dataset(name: str):
    """Register `fn(**options) -> Splits` as dataset `name`; every option needs a default (the yaml mirrors them).

    The registry holds a builder `(**options) -> DataBundle` accepting fn's options and COMMON_OPTIONS;
    `inspect.signature(DATASETS.get(name))` lists them with their defaults. fn itself is returned unchanged.
    """

    def decorate(fn: Callable[..., Splits]) -> Callable[..., Splits]:
        own = inspect.signature(fn).parameters
        if any(p.default is inspect.Parameter.empty for p in own.values()):
            raise EtfTrainError(f"dataset {name!r}: every option of {fn.__name__} needs a default")
        defaults = {**COMMON_OPTIONS, **{k: p.default for k, p in own.items()}}

        @functools.wraps(fn)
        def build(**options: Any) -> DataBundle:  # options checked by DATASETS.build against the signature below
            opts = {**defaults, **options}
            raw = fn(**{k: opts[k] for k in own})
            return _bundle(name, raw, **{k: opts[k] for k in COMMON_OPTIONS})

        build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in defaults.items()],
            return_annotation=DataBundle,
        )
        DATASETS.add(name, build)
        return fn

    return decorate


def build_data(name: str, **options: Any) -> DataBundle:
    """The DataBundle of dataset `name`; `options` are its config keys other than `name`."""
    return DATASETS.build(name, **options)


class _View(Dataset):
    """(transform(x), labels[i]) for (x, _) = base[indices[i]]: the labels are the bundle's targets, so both loader
    paths serve the same ones (label noise included)."""

    def __init__(self, base: Dataset, indices: Tensor, transform: Callable | None, labels: Tensor):
        self.base, self.indices, self.transform, self.labels = base, indices.tolist(), transform, labels.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, _ = self.base[self.indices[i]]
        return (x if self.transform is None else self.transform(x)), self.labels[i]


def _rows(x: Tensor, positions: Tensor) -> Tensor:
    """x[positions] for sorted distinct positions, without copying when they are all of x."""
    return x if len(positions) == len(x) else x[positions]


def _train_positions(name: str, raw: Splits, ratio: float, limit_train: Any, split_seed: int) -> Tensor:
    """Sorted positions in raw's train split that the run keeps: the long tail, then the limit."""
    K = raw.num_classes
    tr = torch.arange(len(raw.train_targets))
    if ratio > 1:
        if K < 2:
            raise EtfTrainError(f"dataset {name}: imbalance_ratio needs at least 2 classes")
        wanted = long_tail_counts(torch.bincount(raw.train_targets, minlength=K).tolist(), ratio)
        if min(wanted) < 1:
            raise EtfTrainError(
                f"dataset {name}: imbalance_ratio={ratio:g} leaves class {wanted.index(min(wanted))} without samples "
                f"(largest class: {max(wanted)}); use a smaller ratio"
            )
        tr = take(raw.train_targets, wanted, split_seed)
    if limit_train is not None:
        n = opt.integer("dataset.limit_train", limit_train)
        tail = raw.train_targets[tr]
        tr = tr[stratified_subset(tail, n, K, split_seed, "dataset.limit_train")]
        if ratio > 1:
            _check_tail(n, ratio, torch.bincount(tail, minlength=K), torch.bincount(raw.train_targets[tr], minlength=K))
    return tr


def _check_tail(limit: int, ratio: float, before: Tensor, after: Tensor) -> None:
    """A warning when limit_train, which keeps one sample per class and shares the rest in proportion, leaves a much
    milder long tail than imbalance_ratio asked for (100 became 23 at limit_train=64 on 10 classes)."""
    asked, kept = float(before.max() / before.min()), float(after.max() / after.min())
    if kept < asked / 1.2:
        log.warning(
            "dataset.limit_train=%d keeps a milder long tail than dataset.imbalance_ratio=%g asked for: "
            "n_max / n_min = %.3g (class counts %s); raise limit_train for the ratio",
            limit,
            ratio,
            kept,
            after.tolist(),
        )


def _bundle(
    name: str,
    raw: Splits,
    *,
    augment: Any,
    flip: Any,
    imbalance_ratio: Any,
    limit_train: Any,
    limit_test: Any,
    split_seed: Any,
    label_noise: Any,
) -> DataBundle:
    augment = opt.boolean("dataset.augment", augment)
    split_seed = opt.integer("dataset.split_seed", split_seed, 0)
    ratio = opt.number("dataset.imbalance_ratio", imbalance_ratio, 1.0)
    noise = opt.number("dataset.label_noise", label_noise, 0.0, below=1.0)
    K = raw.num_classes
    tr = _train_positions(name, raw, ratio, limit_train, split_seed)
    clean = raw.train_targets[tr]
    train_targets, noisy = flip_labels(clean, noise, K, split_seed) if noise > 0 else (clean, None)

    spec, plain = (raw.augment if augment else raw.augment.plain()), raw.augment.plain()
    if not opt.boolean("dataset.flip", flip):  # digits, text: a mirror image is another shape; keep the crop
        spec = replace(spec, flip=False)
    if raw.train is None:
        train = eval_train = TensorDataset(torch.arange(len(tr)), train_targets)
        test_base, test_targets, eval_tf = eval_train, clean, None  # the train samples, with their clean labels
    else:
        size = raw.in_shape[1:]
        eval_tf = plain.per_sample(size, raw.eval_ops)
        train_tf = spec.per_sample(size, raw.train_ops) if augment else eval_tf
        train = _View(raw.train, tr, train_tf, train_targets)
        eval_train = _View(raw.train, tr, eval_tf, train_targets)
        test_base, test_targets = raw.test, raw.test_targets
    te = torch.arange(len(test_targets))
    if limit_test is not None:
        n = opt.integer("dataset.limit_test", limit_test)
        te = stratified_subset(test_targets, n, K, split_seed, "dataset.limit_test")
    test = _View(test_base, te, eval_tf, test_targets[te])
    if raw.train is None:
        train_x = eval_train.tensors[0]
        test_x = train_x[te]
    elif raw.tensors is None:
        train_x = test_x = None
    else:
        train_x, test_x = _rows(raw.tensors[0], tr), _rows(raw.tensors[1], te)
    return DataBundle(
        train,
        test,
        eval_train,
        K,
        raw.in_shape,
        train_targets,
        test_targets[te],
        spec,
        train_x,
        test_x,
        name,
        clean,
        noisy,
        tuple(str(c) for c in (raw.class_names or range(K))),
        raw.train is not None,
        raw.files,
    )
