"""The dataset builders, one per config file in configs/dataset/: torchvision datasets, image folders, and
in-memory sets (digits, synthetic, UFM). Each returns `Splits`; registry.py turns them into a DataBundle."""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .. import options as opt
from ..errors import EtfTrainError
from .augment import Augment
from .cache import cache_mode, decoded, sample_lines
from .registry import Splits, register_dataset
from .subsets import stratified_subset

log = logging.getLogger("etf_train")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _stats(key: str, value: Any, channels: int, positive: bool) -> tuple[float, ...]:
    try:
        stats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        stats = ()
    if len(stats) != channels or (positive and min(stats) <= 0):
        need = "positive numbers" if positive else "numbers"
        raise EtfTrainError(f"dataset.{key}={value!r} must be a list of {channels} {need}")
    return stats


def _root(root: Any) -> Path:
    return Path(str(root)).expanduser().resolve()


# ----------------------------------------------------------------------------- torchvision datasets


def _tvd():
    """torchvision.datasets, imported by the builders that read its files (not by digits, synthetic or UFM runs)."""
    from torchvision import datasets

    return datasets


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
    root, download = _root(root), opt.boolean("dataset.download", download)
    train, test = _torchvision(name, lambda tr: cls(str(root), train=tr, download=download), root, download, folder)
    tensors = tuple(
        torch.from_numpy(ds.data).permute(0, 3, 1, 2) for ds in (train, test)
    )  # (N, 32, 32, 3) uint8 -> NCHW
    return Splits(
        train,
        test,
        _labels(train.targets),
        _labels(test.targets),
        K,
        (3, 32, 32),
        Augment(4, True, *stats),
        tensors,
        class_names=train.classes,
    )


@register_dataset("cifar10")
def cifar10(root: str = "data", download: bool = True) -> Splits:
    """CIFAR-10 (torchvision); augmentation: random crop with padding 4, horizontal flip."""
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return _cifar("cifar10", _tvd().CIFAR10, "cifar-10-batches-py/ folder", 10, stats, root, download)


@register_dataset("cifar100")
def cifar100(root: str = "data", download: bool = True) -> Splits:
    """CIFAR-100 (torchvision, fine labels); augmentation: random crop with padding 4, horizontal flip."""
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    return _cifar("cifar100", _tvd().CIFAR100, "cifar-100-python/ folder", 100, stats, root, download)


@register_dataset("stl10")
def stl10(root: str = "data", download: bool = True) -> Splits:
    """STL-10 labelled splits (torchvision, 96 px); augmentation: random crop with padding 12, horizontal flip."""
    root, download = _root(root), opt.boolean("dataset.download", download)
    make = lambda tr: _tvd().STL10(str(root), split="train" if tr else "test", download=download)  # noqa: E731
    train, test = _torchvision("stl10", make, root, download, "stl10_binary/ folder")
    stats = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
    tensors = tuple(torch.from_numpy(ds.data) for ds in (train, test))  # (N, 3, 96, 96) uint8
    return Splits(
        train,
        test,
        _labels(train.labels),
        _labels(test.labels),
        10,
        (3, 96, 96),
        Augment(12, True, *stats),
        tensors,
        class_names=train.classes,
    )


def _mnist_like(name: str, cls: type, stats: tuple, root: Any, download: Any) -> Splits:
    root, download = _root(root), opt.boolean("dataset.download", download)
    folder = f"{cls.__name__}/raw/ folder (the four *-ubyte files)"
    train, test = _torchvision(name, lambda tr: cls(str(root), train=tr, download=download), root, download, folder)
    augment = Augment(2, False, *stats)  # no flip: mirrored digits/garments change meaning
    tensors = tuple(ds.data.unsqueeze(1) for ds in (train, test))  # (N, 1, 28, 28) uint8
    return Splits(
        train,
        test,
        _labels(train.targets),
        _labels(test.targets),
        10,
        (1, 28, 28),
        augment,
        tensors,
        class_names=train.classes,
    )


@register_dataset("mnist")
def mnist(root: str = "data", download: bool = True) -> Splits:
    """MNIST (torchvision); augmentation: random crop with padding 2."""
    return _mnist_like("mnist", _tvd().MNIST, ((0.1307,), (0.3081,)), root, download)


@register_dataset("fashion_mnist")
def fashion_mnist(root: str = "data", download: bool = True) -> Splits:
    """Fashion-MNIST (torchvision); augmentation: random crop with padding 2."""
    return _mnist_like("fashion_mnist", _tvd().FashionMNIST, ((0.2860,), (0.3530,)), root, download)


# ----------------------------------------------------------------------------- image folders


def load_image(path: str) -> Any:
    """torchvision's default image loader, failing with the file's name instead of a bare PIL traceback."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated data, broken PNG chunks
        raise EtfTrainError(f"cannot read image {path} ({_one_line(err)}); replace or remove the file") from err


def _image_folders(
    name: str,
    root: Any,
    image_size: int,
    mean: Any,
    std: Any,
    augment: Augment,
    train_ops: Sequence,
    eval_ops: Sequence,
) -> Splits:
    root = _root(root)
    hint = f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/), or set dataset.root=..."
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise EtfTrainError(f"dataset {name}: no train/ and test/ (or val/) folders under {root}; {hint}")

    def folder(directory: Path):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        skipped = Counter()

        def accepted(path: str) -> bool:  # ImageFolder's own rule, counting what it leaves out
            ok = path.lower().endswith(IMG_EXTENSIONS)
            if not ok and not os.path.basename(path).startswith("."):
                skipped[os.path.splitext(path)[1].lower() or "(no extension)"] += 1
            return ok

        try:
            found = _tvd().ImageFolder(str(directory), loader=load_image, is_valid_file=accepted)
        except FileNotFoundError as err:  # no class folder, or a class folder without images
            raise EtfTrainError(f"dataset {name}: {directory}: {_one_line(err)}; {hint}") from err
        if skipped:
            log.warning(
                "dataset %s: %d files under %s are not images torchvision reads and are left out (%s)",
                name,
                sum(skipped.values()),
                directory,
                ", ".join(f"{ext} x{n}" for ext, n in skipped.most_common()),
            )
        return found

    train, test = folder(root / "train"), folder(test_dir)
    if train.classes != test.classes:
        odd = sorted(set(train.classes) ^ set(test.classes))
        raise EtfTrainError(
            f"dataset {name}: train/ and {test_dir.name}/ under {root} hold different class folders "
            f"({len(odd)} in only one, e.g. {', '.join(odd[:3])}); give both the same class folders"
        )
    augment = replace(augment, mean=_stats("mean", mean, 3, False), std=_stats("std", std, 3, True))
    K, in_shape = len(train.classes), (3, image_size, image_size)
    return Splits(
        train,
        test,
        _labels(train.targets),
        _labels(test.targets),
        K,
        in_shape,
        augment,
        None,
        train_ops,
        eval_ops,
        train.classes,
        _file_list(root, train, test),
    )


def _file_list(root: Path, train, test) -> str:
    """Which files the splits hold: counts and a hash of each file's path (relative to root) and label. Content
    edited in place is not seen (that would take a stat of every file; the cache's key has one for image_folder)."""
    h = hashlib.sha256()
    for line in sample_lines(root, (train, test)):
        h.update(line)
    return f"{len(train.samples)} train + {len(test.samples)} test files, sha256 {h.hexdigest()[:16]}"


@register_dataset("imagenet")
def imagenet(
    root: str = "data/imagenet",
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Splits:
    """ImageNet-style class folders; train: RandomResizedCrop + flip, test: Resize(size/0.875) + CenterCrop."""
    S = opt.integer("dataset.image_size", image_size, 1)
    from torchvision import transforms as T

    eval_ops = [T.Resize(round(S / 0.875)), T.CenterCrop(S)]
    return _image_folders("imagenet", root, S, mean, std, Augment(flip=True), [T.RandomResizedCrop(S)], eval_ops)


@register_dataset("image_folder")
def image_folder(
    root: str = "data/image_folder",
    image_size: int = 32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    cache: str = "auto",
) -> Splits:
    """Small images in class folders, resized and centre-cropped to image_size; augmentation: CIFAR-style
    random crop with padding image_size // 8, horizontal flip. cache (cache.py): auto / on decode both splits
    once into uint8 tensors kept in a cache file (auto: when they fit its memory budget), which the device
    path serves; off: the files are decoded every epoch (DataLoader path)."""
    S = opt.integer("dataset.image_size", image_size, 1)
    mode = cache_mode(cache)
    from torchvision import transforms as T

    resize = [T.Resize(S), T.CenterCrop(S)]
    splits = _image_folders("image_folder", root, S, mean, std, Augment(S // 8, True), resize, resize)
    # Resizing is the only op before the random crop and flip, which the device path draws per batch: the
    # resized pixels, decoded once, are what every epoch of the DataLoader path crops and flips.
    return replace(splits, tensors=decoded(_root(root), (splits.train, splits.test), S, resize, mode))


# ----------------------------------------------------------------------------- in-memory datasets


@register_dataset("digits")
def digits(split_seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 images, offline): pixels / 16, normalised with the train
    split's mean and std; stratified seeded 80/20 train/test split. No augmentation (images too small)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = _labels(data.target)
    train = stratified_subset(y, round(0.8 * len(y)), 10, opt.integer("dataset.split_seed", split_seed, 0))
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
    K = opt.integer("dataset.num_classes", num_classes, 2)
    C = opt.integer("dataset.channels", channels, 1)
    S = opt.integer("dataset.image_size", image_size, 1)
    n_train = opt.integer("dataset.train_per_class", train_per_class, 1)
    n_test = opt.integer("dataset.test_per_class", test_per_class, 1)
    sigma = opt.number("dataset.noise", noise, 0.0)
    g = torch.Generator().manual_seed(opt.integer("dataset.seed", seed, 0))
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
    K = opt.integer("dataset.num_classes", num_classes, 2)
    n = opt.integer("dataset.per_class", per_class, 1)
    return Splits(None, None, torch.arange(K).repeat_interleave(n), None, K, ())
