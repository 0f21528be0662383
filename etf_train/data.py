"""Datasets and loaders: a registry of dataset builders keyed by config name, and seeded, rank-sharded loaders.

A registered dataset function returns `Splits` (raw train/test data, labels, transforms). The registry
wraps it into a builder taking that function's options plus the options common to every dataset
(`COMMON_OPTIONS`), which applies the long-tail subsample, the limits and the augmentation switch and
returns a `DataBundle`:

    train       items (x, y): x float (C, H, W), normalised, augmented when `augment`
                (ufm: x is the sample's position in `train`, a 0-dim long tensor)
    test        no augmentation
    eval_train  the train samples, same order, without augmentation (for the NC metrics)

Datasets held in memory (CIFAR, MNIST, STL-10, digits, synthetic, ufm) also give their splits as tensors
(`DataBundle.train_x` / `test_x`): `build_loaders` then serves batches from tensors on the training device and
augments them there in batches (`DeviceLoader`), with no worker processes. Image-folder datasets use the
DataLoader path (workers, pinned memory). One `Augment` spec per dataset drives both paths.

Every seeded choice about which samples a run sees (digits' train/test split, the long tail, the
limits) uses `split_seed`, not the training seed, so runs with different seeds see the same data.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.folder import default_loader

from etf_train.errors import EtfTrainError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

COMMON_OPTIONS: dict[str, Any] = {
    "augment": True,
    "class_balanced": False,  # read by the trainer (build_loaders); accepted here so a config passes through whole
    "imbalance_ratio": 1.0,
    "limit_train": None,
    "limit_test": None,
    "loader": "auto",  # read by the trainer (build_loaders); checked here against the dataset
    "num_workers": 0,  # read by the trainer (build_loaders)
    "split_seed": 0,
}
LOADERS = ("auto", "device", "dataloader")


@dataclass(frozen=True)
class Augment:
    """A dataset's standard train augmentation and the normalisation of every split, in one spec for both loaders.

    Train: a random crop of the image's own size from the image zero-padded by `padding` on each side
    (offsets uniform on [-padding, padding]; 0: no crop), then a horizontal flip with probability 1/2 when
    `flip`. Every split then: x = (pixels / 255 - mean) / std per channel; mean None: x is already a
    normalised float (digits, synthetic) or a position (ufm) and stays as it is.
    """

    padding: int = 0
    flip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def plain(self) -> Augment:
        """The same normalisation without the random ops: what test, eval_train and augment=false get."""
        return replace(self, padding=0, flip=False)

    def per_sample(self, size: Sequence[int], before: Sequence = ()) -> Callable | None:
        """Per-sample form (DataLoader path) for PIL images: `before`, RandomCrop, RandomHorizontalFlip, ToTensor,
        Normalize; None when that is nothing."""
        ops = list(before)
        if self.padding:
            ops.append(T.RandomCrop(tuple(size), padding=self.padding))
        if self.flip:
            ops.append(T.RandomHorizontalFlip())
        if self.mean is not None:
            ops += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(ops) if ops else None

    def per_batch(self, device: torch.device) -> Callable[[Tensor, torch.Generator], Tensor]:
        """Batch form (device path): (x (B, C, H, W) on `device`, generator on `device`) -> augmented, normalised x."""
        stats = None
        if self.mean is not None:  # moved once: a blocking host-to-device copy per batch would stall the GPU queue
            stats = (torch.tensor(self.mean, device=device)[:, None, None], torch.tensor(self.std, device=device)[:, None, None])

        def transform(x: Tensor, generator: torch.Generator) -> Tensor:
            if self.padding or self.flip:
                x = random_crop_flip(x, self.padding, self.flip, generator)
            return x if stats is None else normalise(x, *stats)

        return transform


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    eval_train: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    train_targets: Tensor  # (N_train,) long, labels of `train` in order
    test_targets: Tensor  # (N_test,) long, labels of `test` in order
    augment: Augment  # what `train` applies (crop and flip off when augment=false); test, eval_train: augment.plain()
    # The splits as tensors for the device path, rows in the order of `train` / `test`, before `augment`:
    # uint8 pixels or normalised floats (N, C, H, W), ufm positions (N,). None: the images are files (DataLoader only).
    train_x: Tensor | None
    test_x: Tensor | None
    name: str


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


DATASETS: dict[str, Callable[..., DataBundle]] = {}


def register_dataset(name: str):
    """Register `fn(**options) -> Splits` as dataset `name`; every option needs a default (the yaml mirrors them).

    The registry holds a builder `(**options) -> DataBundle` accepting fn's options and COMMON_OPTIONS;
    `inspect.signature(DATASETS[name])` lists them with their defaults. fn itself is returned unchanged.
    """

    def decorate(fn: Callable[..., Splits]) -> Callable[..., Splits]:
        if name in DATASETS:
            raise EtfTrainError(f"dataset {name!r} is already registered")
        own = inspect.signature(fn).parameters
        if any(p.default is inspect.Parameter.empty for p in own.values()):
            raise EtfTrainError(f"dataset {name!r}: every option of {fn.__name__} needs a default")
        defaults = {**COMMON_OPTIONS, **{k: p.default for k, p in own.items()}}

        @functools.wraps(fn)
        def build(**options: Any) -> DataBundle:
            unknown = sorted(set(options) - set(defaults))
            if unknown:
                raise EtfTrainError(
                    f"dataset {name}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(defaults)}"
                )
            opts = {**defaults, **options}
            raw = fn(**{k: opts[k] for k in own})
            return _bundle(name, raw, **{k: opts[k] for k in COMMON_OPTIONS})

        build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in defaults.items()],
            return_annotation=DataBundle,
        )
        DATASETS[name] = build
        return fn

    return decorate


def build_data(name: str, **options: Any) -> DataBundle:
    """The DataBundle of dataset `name`; `options` are its config keys other than `name`."""
    if name not in DATASETS:
        raise EtfTrainError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**options)


# ----------------------------------------------------------------------------- option checks


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _int(name: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EtfTrainError(f"dataset {name}: {key}={value!r} must be an integer >= {minimum}")
    return value


def _bool(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise EtfTrainError(f"dataset {name}: {key}={value!r} must be true or false")
    return value


def _float(name: str, key: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum or math.isinf(value):
        raise EtfTrainError(f"dataset {name}: {key}={value!r} must be a finite number >= {minimum}")
    return float(value)


def _stats(name: str, key: str, value: Any, channels: int, positive: bool) -> tuple[float, ...]:
    try:
        stats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        stats = ()
    if len(stats) != channels or (positive and min(stats) <= 0):
        need = "positive numbers" if positive else "numbers"
        raise EtfTrainError(f"dataset {name}: {key}={value!r} must be a list of {channels} {need}")
    return stats


def _root(root: Any) -> Path:
    return Path(str(root)).expanduser().resolve()


# ----------------------------------------------------------------------------- subsets


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def long_tail_counts(class_counts: Sequence[int], ratio: float) -> list[int]:
    """n_c = round(n_max * ratio^(-c/(K-1))), capped at class c's count: the long-tailed (exponential) profile."""
    K, n_max = len(class_counts), max(class_counts)
    return [min(int(n), round(n_max * ratio ** (-c / (K - 1)))) for c, n in enumerate(class_counts)]


def stratified_counts(class_counts: Sequence[int], n: int) -> list[int]:
    """How many of each class a stratified subset of n samples keeps.

    Every present class keeps one sample; the other n - P are shared in proportion to (count_c - 1)
    by largest remainder (ties to the lower class), so no class vanishes and no class exceeds its count.
    """
    counts = torch.tensor(class_counts, dtype=torch.float64)
    present = (counts > 0).to(torch.float64)
    spare = counts - present
    if spare.sum() == 0:
        return [int(c) for c in present]
    exact = (n - present.sum()) * spare / spare.sum()
    quota = exact.floor()
    order = torch.argsort(-(exact - quota), stable=True)
    quota[order[: int(n - present.sum() - quota.sum())]] += 1
    return [int(q) for q in present + quota]


def _take(targets: Tensor, per_class: Sequence[int], seed: int) -> Tensor:
    """Sorted positions of a seeded random choice of per_class[c] samples of each class c."""
    g = _generator(seed)
    by_class = torch.argsort(targets, stable=True).split(torch.bincount(targets, minlength=len(per_class)).tolist())
    picked = [idx[torch.randperm(len(idx), generator=g)[:k]] for idx, k in zip(by_class, per_class)]
    return torch.cat(picked).sort().values


def stratified_subset(targets: Tensor, n: int, num_classes: int, seed: int, what: str = "subset") -> Tensor:
    """Sorted positions of a seeded stratified subset of n samples (all of them if n >= len(targets))."""
    counts = torch.bincount(targets, minlength=num_classes).tolist()
    present = sum(c > 0 for c in counts)
    if n >= len(targets):
        return torch.arange(len(targets))
    if n < present:
        raise EtfTrainError(f"{what}={n}: a stratified subset that small cannot hold all {present} classes; use >= {present}")
    return _take(targets, stratified_counts(counts, n), seed)


# ----------------------------------------------------------------------------- bundle assembly


class _View(Dataset):
    """base[indices[i]] with `transform` applied to x."""

    def __init__(self, base: Dataset, indices: Tensor, transform: Callable | None):
        self.base, self.indices, self.transform = base, indices.tolist(), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[self.indices[i]]
        return (x if self.transform is None else self.transform(x)), y


def loader_kind(name: str, loader: Any, in_memory: bool) -> str:
    """Resolve the `loader` option: auto -> device when the dataset is held in memory, else dataloader."""
    if loader not in LOADERS:
        raise EtfTrainError(f"dataset {name}: loader={loader!r} must be one of {', '.join(LOADERS)}")
    if loader == "device" and not in_memory:
        raise EtfTrainError(
            f"dataset {name}: loader=device needs a dataset held in memory as tensors, and {name} reads image files; "
            "use loader=dataloader (or auto)"
        )
    return loader if loader != "auto" else "device" if in_memory else "dataloader"


def _rows(x: Tensor, positions: Tensor) -> Tensor:
    """x[positions] for sorted distinct positions, without copying when they are all of x."""
    return x if len(positions) == len(x) else x[positions]


def _bundle(
    name: str,
    raw: Splits,
    *,
    augment: Any,
    class_balanced: Any,
    imbalance_ratio: Any,
    limit_train: Any,
    limit_test: Any,
    loader: Any,
    num_workers: Any,
    split_seed: Any,
) -> DataBundle:
    augment = _bool(name, "augment", augment)
    _bool(name, "class_balanced", class_balanced)
    _int(name, "num_workers", num_workers, 0)
    loader_kind(name, loader, raw.train is None or raw.tensors is not None)
    split_seed = _int(name, "split_seed", split_seed, 0)
    ratio = _float(name, "imbalance_ratio", imbalance_ratio, 1.0)
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
        tr = _take(raw.train_targets, wanted, split_seed)
    if limit_train is not None:
        n = _int(name, "limit_train", limit_train, 1)
        tr = tr[stratified_subset(raw.train_targets[tr], n, K, split_seed, f"dataset {name}: limit_train")]
    train_targets = raw.train_targets[tr]

    spec, plain = (raw.augment if augment else raw.augment.plain()), raw.augment.plain()
    if raw.train is None:
        train = eval_train = TensorDataset(torch.arange(len(tr)), train_targets)
        test_base, test_targets, eval_tf = eval_train, train_targets, None
    else:
        size = raw.in_shape[1:]
        eval_tf = plain.per_sample(size, raw.eval_ops)
        train_tf = spec.per_sample(size, raw.train_ops) if augment else eval_tf
        train = _View(raw.train, tr, train_tf)
        eval_train = _View(raw.train, tr, eval_tf)
        test_base, test_targets = raw.test, raw.test_targets
    te = torch.arange(len(test_targets))
    if limit_test is not None:
        n = _int(name, "limit_test", limit_test, 1)
        te = stratified_subset(test_targets, n, K, split_seed, f"dataset {name}: limit_test")
    test = _View(test_base, te, eval_tf)
    if raw.train is None:
        train_x = eval_train.tensors[0]
        test_x = train_x[te]
    elif raw.tensors is None:
        train_x = test_x = None
    else:
        train_x, test_x = _rows(raw.tensors[0], tr), _rows(raw.tensors[1], te)
    return DataBundle(
        train, test, eval_train, K, raw.in_shape, train_targets, test_targets[te], spec, train_x, test_x, name
    )


# ----------------------------------------------------------------------------- torchvision datasets


def _torchvision(
    name: str, make: Callable[[bool], Dataset], root: Path, download: bool, folder: str
) -> tuple[Dataset, Dataset]:
    """(train, test) from `make(train)`, turning torchvision's missing-file / failed-download errors into one line."""
    try:
        return make(True), make(False)
    except (RuntimeError, OSError, tarfile.TarError) as err:
        why = f"the download failed: {_one_line(err)}" if download else f"download=false: {_one_line(err)}"
        raise EtfTrainError(
            f"dataset {name}: files missing or corrupt under {root} ({why}); "
            f"put torchvision's {folder} under {root}, or set dataset.root=<the folder that holds it>"
        ) from err


def _labels(values: Any) -> Tensor:
    return torch.as_tensor(values, dtype=torch.long)


def _cifar(name: str, cls: type, folder: str, K: int, stats: tuple, root: Any, download: Any) -> Splits:
    root, download = _root(root), _bool(name, "download", download)
    train, test = _torchvision(name, lambda tr: cls(str(root), train=tr, download=download), root, download, folder)
    tensors = tuple(torch.from_numpy(ds.data).permute(0, 3, 1, 2) for ds in (train, test))  # (N, 32, 32, 3) uint8 -> NCHW
    return Splits(
        train, test, _labels(train.targets), _labels(test.targets), K, (3, 32, 32), Augment(4, True, *stats), tensors
    )


@register_dataset("cifar10")
def cifar10(root: str = "data", download: bool = True) -> Splits:
    """CIFAR-10 (torchvision); augmentation: random crop with padding 4, horizontal flip."""
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return _cifar("cifar10", tvd.CIFAR10, "cifar-10-batches-py/ folder", 10, stats, root, download)


@register_dataset("cifar100")
def cifar100(root: str = "data", download: bool = True) -> Splits:
    """CIFAR-100 (torchvision, fine labels); augmentation: random crop with padding 4, horizontal flip."""
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    return _cifar("cifar100", tvd.CIFAR100, "cifar-100-python/ folder", 100, stats, root, download)


@register_dataset("stl10")
def stl10(root: str = "data", download: bool = True) -> Splits:
    """STL-10 labelled splits (torchvision, 96 px); augmentation: random crop with padding 12, horizontal flip."""
    root, download = _root(root), _bool("stl10", "download", download)
    make = lambda tr: tvd.STL10(str(root), split="train" if tr else "test", download=download)  # noqa: E731
    train, test = _torchvision("stl10", make, root, download, "stl10_binary/ folder")
    stats = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
    tensors = tuple(torch.from_numpy(ds.data) for ds in (train, test))  # (N, 3, 96, 96) uint8
    return Splits(
        train, test, _labels(train.labels), _labels(test.labels), 10, (3, 96, 96), Augment(12, True, *stats), tensors
    )


def _mnist_like(name: str, cls: type, stats: tuple, root: Any, download: Any) -> Splits:
    root, download = _root(root), _bool(name, "download", download)
    folder = f"{cls.__name__}/raw/ folder (the four *-ubyte files)"
    train, test = _torchvision(name, lambda tr: cls(str(root), train=tr, download=download), root, download, folder)
    augment = Augment(2, False, *stats)  # no flip: mirrored digits/garments change meaning
    tensors = tuple(ds.data.unsqueeze(1) for ds in (train, test))  # (N, 1, 28, 28) uint8
    return Splits(train, test, _labels(train.targets), _labels(test.targets), 10, (1, 28, 28), augment, tensors)


@register_dataset("mnist")
def mnist(root: str = "data", download: bool = True) -> Splits:
    """MNIST (torchvision); augmentation: random crop with padding 2."""
    return _mnist_like("mnist", tvd.MNIST, ((0.1307,), (0.3081,)), root, download)


@register_dataset("fashion_mnist")
def fashion_mnist(root: str = "data", download: bool = True) -> Splits:
    """Fashion-MNIST (torchvision); augmentation: random crop with padding 2."""
    return _mnist_like("fashion_mnist", tvd.FashionMNIST, ((0.2860,), (0.3530,)), root, download)


# ----------------------------------------------------------------------------- image folders


def load_image(path: str) -> Any:
    """torchvision's default image loader, failing with the file's name instead of a bare PIL traceback."""
    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated data, broken PNG chunks
        raise EtfTrainError(f"cannot read image {path} ({_one_line(err)}); replace or remove the file") from err


def _image_folders(
    name: str, root: Any, image_size: int, mean: Any, std: Any, augment: Augment, train_ops: Sequence, eval_ops: Sequence
) -> Splits:
    root = _root(root)
    hint = f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/), or set dataset.root=..."
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise EtfTrainError(f"dataset {name}: no train/ and test/ (or val/) folders under {root}; {hint}")

    def folder(directory: Path) -> tvd.ImageFolder:
        try:
            return tvd.ImageFolder(str(directory), loader=load_image)
        except FileNotFoundError as err:  # no class folder, or a class folder without images
            raise EtfTrainError(f"dataset {name}: {directory}: {_one_line(err)}; {hint}") from err

    train, test = folder(root / "train"), folder(test_dir)
    if train.classes != test.classes:
        odd = sorted(set(train.classes) ^ set(test.classes))
        raise EtfTrainError(
            f"dataset {name}: train/ and {test_dir.name}/ under {root} hold different class folders "
            f"({len(odd)} in only one, e.g. {', '.join(odd[:3])}); give both the same class folders"
        )
    augment = replace(augment, mean=_stats(name, "mean", mean, 3, False), std=_stats(name, "std", std, 3, True))
    K, in_shape = len(train.classes), (3, image_size, image_size)
    return Splits(
        train, test, _labels(train.targets), _labels(test.targets), K, in_shape, augment, None, train_ops, eval_ops
    )


@register_dataset("imagenet")
def imagenet(
    root: str = "data/imagenet",
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Splits:
    """ImageNet-style class folders; train: RandomResizedCrop + flip, test: Resize(size/0.875) + CenterCrop."""
    S = _int("imagenet", "image_size", image_size, 1)
    eval_ops = [T.Resize(round(S / 0.875)), T.CenterCrop(S)]
    return _image_folders("imagenet", root, S, mean, std, Augment(flip=True), [T.RandomResizedCrop(S)], eval_ops)


@register_dataset("image_folder")
def image_folder(
    root: str = "data/image_folder",
    image_size: int = 32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Splits:
    """Small images in class folders, resized and centre-cropped to image_size; augmentation: CIFAR-style
    random crop with padding image_size // 8, horizontal flip."""
    S = _int("image_folder", "image_size", image_size, 1)
    resize = [T.Resize(S), T.CenterCrop(S)]
    return _image_folders("image_folder", root, S, mean, std, Augment(S // 8, True), resize, resize)


# ----------------------------------------------------------------------------- in-memory datasets


@register_dataset("digits")
def digits(split_seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 images, offline): pixels / 16, normalised with the train
    split's mean and std; stratified seeded 80/20 train/test split. No augmentation (images too small)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = _labels(data.target)
    train = stratified_subset(y, round(0.8 * len(y)), 10, _int("digits", "split_seed", split_seed, 0))
    is_test = torch.ones(len(y), dtype=torch.bool)
    is_test[train] = False
    x = (x - x[train].mean()) / x[train].std()
    splits = TensorDataset(x[train], y[train]), TensorDataset(x[is_test], y[is_test])
    return Splits(*splits, y[train], y[is_test], 10, (1, 8, 8), tensors=tuple(ds.tensors[0] for ds in splits))


@register_dataset("synthetic")
def synthetic(
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 16,
    train_per_class: int = 64,
    test_per_class: int = 16,
    noise: float = 1.0,
    seed: int = 0,
) -> Splits:
    """Class-clustered Gaussian images: x = prototype_y + noise * N(0, I), one fixed N(0, I) prototype per
    class, all drawn from `seed`. No augmentation."""
    K = _int("synthetic", "num_classes", num_classes, 2)
    C = _int("synthetic", "channels", channels, 1)
    S = _int("synthetic", "image_size", image_size, 1)
    n_train = _int("synthetic", "train_per_class", train_per_class, 1)
    n_test = _int("synthetic", "test_per_class", test_per_class, 1)
    sigma = _float("synthetic", "noise", noise, 0.0)
    g = _generator(_int("synthetic", "seed", seed, 0))
    prototypes = torch.randn(K, C, S, S, generator=g)

    def draw(per_class: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(K).repeat_interleave(per_class)
        return prototypes[y] + sigma * torch.randn(len(y), C, S, S, generator=g), y

    (x_tr, y_tr), (x_te, y_te) = draw(n_train), draw(n_test)
    return Splits(TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te), y_tr, y_te, K, (C, S, S), tensors=(x_tr, x_te))


@register_dataset("ufm")
def ufm(num_classes: int = 10, per_class: int = 50) -> Splits:
    """Unconstrained-features model: per_class samples of each class, x = the sample's index (its features
    are free parameters of the backbone). No held-out data: the test split is the train samples."""
    K = _int("ufm", "num_classes", num_classes, 2)
    n = _int("ufm", "per_class", per_class, 1)
    return Splits(None, None, torch.arange(K).repeat_interleave(n), None, K, ())


# ----------------------------------------------------------------------------- samplers and loaders


def _check_shard(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise EtfTrainError(f"rank={rank!r}, world_size={world_size!r}: need integers with 0 <= rank < world_size")


class ShardSampler(Sampler[int]):
    """Positions rank, rank + world_size, ... in order: disjoint shards covering the data, no padding,
    so statistics summed across ranks count every sample exactly once (evaluation)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        _check_shard(rank, world_size)
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Stratified batches: every batch is a window of one epoch-long sequence that cycles through the
    classes in a fixed (per-epoch random) order, taking each class's samples in a per-epoch random order.

    On balanced data each batch holds floor(B/K) or ceil(B/K) of every class; a class that runs out
    (imbalanced data) stops contributing. Shuffles are seeded by seed + epoch (call `set_epoch`).
    Sharding follows DistributedSampler: the sequence is padded by wrapping to a multiple of world_size,
    global step s hands batch s*world_size + rank to `rank`, and the final partial step is split
    evenly, so every rank gets the same number of samples and batches.
    """

    def __init__(self, targets: Tensor, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise EtfTrainError(f"batch_size={batch_size!r} must be an integer >= 1")
        _check_shard(rank, world_size)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch = 0
        self.total = math.ceil(len(self.targets) / world_size) * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        """This epoch's interleaved sequence of all sample positions (before padding and sharding)."""
        g = _generator(self.seed + self.epoch)
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


# ----------------------------------------------------------------------------- batched augmentation (device path)


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """RandomCrop((H, W), padding) then RandomHorizontalFlip, drawn independently for every sample of a batch:

        out_b = F_b( pad(x_b, padding)[:, i_b : i_b + H, j_b : j_b + W] ),  i_b, j_b ~ U{0, ..., 2 padding},
        F_b = mirror with probability 1/2 when `flip`, else identity,

    zero padding as torchvision's. x: (B, C, H, W), any dtype; the draws come from `generator` (on x's device).
    """
    B, _, H, W = x.shape
    if padding:
        i, j = torch.randint(0, 2 * padding + 1, (2, B), generator=generator, device=x.device)
        windows = F.pad(x, (padding,) * 4).unfold(2, H, 1).unfold(3, W, 1)  # (B, C, 2p+1, 2p+1, H, W), a view
        x = windows[torch.arange(B, device=x.device), :, i, j]  # (B, C, H, W)
    if flip:
        mirror = torch.rand(B, generator=generator, device=x.device) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x


def normalise(pixels: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(pixels / 255 - mean) / std in float32, the same operations as torchvision's ToTensor + Normalize (so the
    two loader paths agree bit for bit). pixels: (B, C, H, W) uint8; mean, std: (C, 1, 1)."""
    return pixels.to(torch.float32).div(255).sub_(mean).div_(std)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers; unlike seed + epoch, (1, 0) and (0, 1) differ."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


class DeviceLoader:
    """Batches (transform(x[idx]), y[idx]) from tensors already on one device: no workers, no per-batch copies.

    The batches of indices come from `batch_sampler`, the same samplers the DataLoader path uses, so both paths
    see the same samples in the same order. The random augmentation draws from a generator on the device
    seeded by (seed, rank, epoch): an epoch's batches are reproducible, across a resumption too.
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
    ):
        self.x, self.y, self.batch_sampler, self.transform = x, y, batch_sampler, transform
        self.seed, self.rank, self.epoch = seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        _set_sampler_epoch(self, epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = [torch.as_tensor(b, dtype=torch.long) for b in self.batch_sampler]
        if not batches:
            return
        order = torch.cat(batches).to(self.x.device)  # one copy per epoch: a blocking copy per batch would sync the GPU
        generator = torch.Generator(self.x.device).manual_seed(_mix(self.seed, self.rank, self.epoch))
        for idx in order.split([len(b) for b in batches]):
            yield self.transform(self.x[idx], generator), self.y[idx]


def _set_sampler_epoch(loader: DataLoader | DeviceLoader, epoch: int) -> None:
    batches = loader.batch_sampler  # ClassBalancedBatchSampler, or a BatchSampler over a DistributedSampler
    for sampler in (batches, getattr(batches, "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return
    raise EtfTrainError("this loader has no sampler with set_epoch; build it with build_loaders")


def set_epoch(loader: DataLoader | DeviceLoader, epoch: int) -> None:
    """Reseed the train loader's shuffle (and the device path's augmentation) for `epoch`, whichever path and
    sampler build_loaders gave it."""
    if isinstance(loader, DeviceLoader):
        loader.set_epoch(epoch)
    else:
        _set_sampler_epoch(loader, epoch)


def build_loaders(
    bundle: DataBundle,
    batch_size: int,
    *,
    class_balanced: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    loader: str = "auto",
    device: torch.device | str | None = None,
) -> tuple[DataLoader | DeviceLoader, DataLoader | DeviceLoader, DataLoader | DeviceLoader]:
    """(train, test, eval_train) loaders for this rank: iterables of (x, y) batches with len().

    loader: "device" serves the bundle's tensors from `device` (default cpu) and augments them there in batches
    (DeviceLoader; num_workers and pin_memory do not apply); "dataloader" uses torch DataLoaders with
    num_workers persistent workers; "auto" picks device when the bundle holds its splits as tensors.
    Both give the same batches of indices:
    train: shuffled from seed + epoch (`set_epoch(loader, epoch)`), sharded as DistributedSampler does (padding by
    wrapping, so ranks get equal sample and batch counts); class_balanced: ClassBalancedBatchSampler. The
    augmentation's randomness derives from seed and rank (DataLoader workers) or seed, rank and epoch (device).
    test / eval_train: in order, each rank a disjoint unpadded shard (ShardSampler): sum statistics across ranks.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise EtfTrainError(f"batch_size={batch_size!r} must be an integer >= 1")
    if not (isinstance(num_workers, int) and num_workers >= 0):
        raise EtfTrainError(f"num_workers={num_workers!r} must be an integer >= 0")
    _check_shard(rank, world_size)
    if class_balanced:
        batches = ClassBalancedBatchSampler(bundle.train_targets, batch_size, seed=seed, rank=rank, world_size=world_size)
    else:
        shuffle = DistributedSampler(bundle.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        batches = BatchSampler(shuffle, batch_size, drop_last=False)

    def in_order(n: int) -> BatchSampler:
        return BatchSampler(ShardSampler(n, rank, world_size), batch_size, drop_last=False)

    if loader_kind(bundle.name, loader, bundle.train_x is not None) == "device":
        device = torch.device("cpu" if device is None else device)
        x_train = bundle.train_x.to(device, memory_format=torch.contiguous_format)
        x_test = bundle.test_x.to(device, memory_format=torch.contiguous_format)
        y_train, y_test = bundle.train_targets.to(device), bundle.test_targets.to(device)
        plain = bundle.augment.plain().per_batch(device)
        return (
            DeviceLoader(x_train, y_train, batches, bundle.augment.per_batch(device), seed=seed, rank=rank),
            DeviceLoader(x_test, y_test, in_order(len(y_test)), plain),
            DeviceLoader(x_train, y_train, in_order(len(y_train)), plain),
        )

    common = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    workers_rng = torch.Generator().manual_seed(seed * 1000 + rank)
    train = DataLoader(bundle.train, batch_sampler=batches, generator=workers_rng, **common)
    test, eval_train = (DataLoader(ds, batch_sampler=in_order(len(ds)), **common) for ds in (bundle.test, bundle.eval_train))
    return train, test, eval_train
