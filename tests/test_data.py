"""Dataset registry, subsets, samplers and loaders, on data the tests write themselves (offline)."""

from __future__ import annotations

import inspect
import logging
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from etf_train.data import (
    DATASETS,
    ClassBalancedBatchSampler,
    DataBundle,
    DeviceLoader,
    build_data,
    build_loaders,
    build_mix,
    cache,
    flip_labels,
    noisy_fit,
    random_crop_flip,
    set_epoch,
)
from etf_train.errors import EtfTrainError

from .conftest import make_cfg, write_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dataset"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalise(pixels_hwc: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 HWC pixels -> normalised CHW float, computed without torchvision."""
    x = torch.tensor(pixels_hwc, dtype=torch.float32).permute(2, 0, 1) / 255
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def check_bundle(b: DataBundle, sample_every: int = 1) -> None:
    """Shapes, label ranges, targets in order, and an eval_train without randomness."""
    n = len(b.train_targets)
    assert len(b.train) == len(b.eval_train) == n and len(b.test) > 0
    assert b.train_targets.dtype == torch.long
    assert torch.equal(
        torch.bincount(b.train_targets, minlength=b.num_classes) > 0, torch.ones(b.num_classes, dtype=torch.bool)
    )
    for i in range(0, n, sample_every):
        x, y = b.eval_train[i]
        assert int(y) == int(b.train_targets[i]) == int(b.train[i][1])
        assert tuple(x.shape) == b.in_shape
        assert x.dtype == (torch.long if b.in_shape == () else torch.float32)
        assert torch.equal(x, b.eval_train[i][0])
    for ds in (b.train, b.test, b.eval_train):
        pickle.loads(pickle.dumps(ds))  # DataLoader workers under spawn / forkserver receive the dataset pickled
    for i in range(0, len(b.test), sample_every):
        x, y = b.test[i]
        assert tuple(x.shape) == b.in_shape and 0 <= int(y) < b.num_classes
        assert torch.equal(x, b.test[i][0])


# ----------------------------------------------------------------------------- configs and options


def test_every_dataset_has_a_yaml_spelling_out_its_options(monkeypatch):
    """The composed dataset node (configs/config.yaml's shared options + configs/dataset/<name>.yaml) holds
    exactly the builder's options with its defaults."""
    monkeypatch.delenv("ETF_DATA_ROOT", raising=False)
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.stem for f in files} == set(DATASETS)
    for f in files:
        cfg = OmegaConf.to_container(make_cfg(f"dataset={f.stem}").dataset, resolve=True)
        assert cfg.pop("name") == f.stem
        params = inspect.signature(DATASETS[f.stem]).parameters
        assert set(cfg) == set(params), f.stem
        for key, value in cfg.items():
            default = params[key].default
            assert (tuple(value) if isinstance(value, list) else value) == default, (f.stem, key)


def test_unknown_names_and_bad_options_are_one_line_errors():
    with pytest.raises(EtfTrainError, match="unknown dataset 'cifar11'.*cifar10.*synthetic"):
        build_data("cifar11")
    with pytest.raises(EtfTrainError, match="unknown option.*batch"):
        build_data("synthetic", batch=3)
    bad = [
        {"imbalance_ratio": 0.5},
        {"imbalance_ratio": float("nan")},
        {"limit_train": 0},
        {"limit_test": -3},
        {"limit_train": 2.5},
        {"limit_train": 3},  # fewer than the 10 classes
        {"augment": "yes"},
        {"split_seed": -1},
        {"noise": -1.0},
        {"num_classes": 1},
        {"imbalance_ratio": 1000.0},  # the tail class would keep round(64 / 1000) = 0 samples
        {"label_noise": -0.1},
        {"label_noise": 1.0},
        {"label_noise": "0.1"},
    ]
    for options in bad:
        with pytest.raises(EtfTrainError) as info:
            build_data("synthetic", **options)
        assert "\n" not in str(info.value) and next(iter(options)) in str(info.value), options
    b = build_data("synthetic", num_classes=3, image_size=4, train_per_class=8)
    for options in ({"num_workers": -1}, {"mode": "gpu"}, {"class_balanced": "yes"}, {"eval_batch_size": 0}):
        with pytest.raises(EtfTrainError, match=next(iter(options))) as info:
            build_loaders(b, 4, **options)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- in-memory datasets


def test_synthetic_is_prototype_plus_noise_and_deterministic():
    options = dict(num_classes=4, channels=2, image_size=5, train_per_class=30, test_per_class=10, noise=0.1, seed=3)
    b = build_data("synthetic", **options)
    check_bundle(b)
    assert b.in_shape == (2, 5, 5) and b.num_classes == 4 and len(b.test) == 40
    x = torch.stack([b.eval_train[i][0] for i in range(len(b.train))])
    means = torch.stack([x[b.train_targets == c].mean(0) for c in range(4)])
    spread = (x - means[b.train_targets]).std()
    assert 0.08 < spread < 0.12  # noise * N(0, 1) around each class's prototype
    assert torch.cdist(means.flatten(1), means.flatten(1)).add(torch.eye(4) * 100).min() > 2
    again = build_data("synthetic", **options)
    assert torch.equal(again.test[7][0], b.test[7][0])
    assert not torch.equal(build_data("synthetic", **{**options, "seed": 4}).test[0][0], b.test[0][0])


def test_digits_is_a_stratified_80_20_split_of_sklearn_digits():
    b = build_data("digits")
    check_bundle(b, sample_every=37)
    assert (b.num_classes, b.in_shape, len(b.train), len(b.test)) == (10, (1, 8, 8), 1438, 359)
    counts = np.bincount(load_digits().target, minlength=10)
    assert np.all(np.abs(torch.bincount(b.train_targets).numpy() - 0.8 * counts) <= 1)
    x = torch.stack([b.eval_train[i][0] for i in range(len(b.train))])
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4  # normalised with the train split's own statistics
    assert not torch.equal(build_data("digits", split_seed=1).train_targets, b.train_targets)


def test_ufm_inputs_are_train_positions_and_test_is_the_train_samples():
    b = build_data("ufm", num_classes=5, per_class=8, imbalance_ratio=4.0)
    check_bundle(b)
    assert b.in_shape == () and b.num_classes == 5
    assert torch.bincount(b.train_targets).tolist() == [8, 6, 4, 3, 2]  # round(8 * 4^(-c/4))
    assert [int(b.train[i][0]) for i in range(len(b.train))] == list(range(len(b.train)))
    assert [(int(x), int(y)) for x, y in b.test] == [(i, int(y)) for i, y in enumerate(b.train_targets)]
    small = build_data("ufm", num_classes=5, per_class=8, limit_test=10)
    assert all(int(small.train_targets[int(x)]) == int(y) for x, y in small.test) and len(small.test) == 10


# ----------------------------------------------------------------------------- subsets


def _rows(ds) -> dict[bytes, int]:
    return {ds[i][0].numpy().tobytes(): int(ds[i][1]) for i in range(len(ds))}


def test_imbalance_ratio_keeps_the_long_tail_counts_of_real_samples():
    full = build_data("synthetic", num_classes=5, image_size=2, train_per_class=40)
    b = build_data("synthetic", num_classes=5, image_size=2, train_per_class=40, imbalance_ratio=10.0)
    check_bundle(b)
    # round(40 * 10^(-c/4)) for c = 0..4: 40, 22.49, 12.65, 7.11, 4.0
    assert torch.bincount(b.train_targets).tolist() == [40, 22, 13, 7, 4]
    assert _rows(b.eval_train).items() <= _rows(full.eval_train).items()
    assert len(b.test) == len(full.test)  # the test split stays balanced
    other = build_data("synthetic", num_classes=5, image_size=2, train_per_class=40, imbalance_ratio=10.0, split_seed=1)
    assert _rows(other.eval_train) != _rows(b.eval_train)


def test_limits_give_seeded_stratified_subsets():
    full = build_data("synthetic", num_classes=4, image_size=2, train_per_class=30, test_per_class=10)
    b = build_data(
        "synthetic", num_classes=4, image_size=2, train_per_class=30, test_per_class=10, limit_train=40, limit_test=12
    )
    check_bundle(b)
    assert torch.bincount(b.train_targets).tolist() == [10, 10, 10, 10]
    assert sorted(int(y) for _, y in b.test) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert _rows(b.eval_train).items() <= _rows(full.eval_train).items()
    assert _rows(b.test).items() <= _rows(full.test).items()
    assert (
        len(build_data("synthetic", num_classes=4, image_size=2, train_per_class=30, limit_train=10_000).train) == 120
    )
    # on a long tail [40, 22, 13, 7, 4]: one sample per class, the other 38 shared in proportion to (n_c - 1)
    tail = build_data(
        "synthetic", num_classes=5, image_size=2, train_per_class=40, imbalance_ratio=10.0, limit_train=43
    )
    assert torch.bincount(tail.train_targets).tolist() == [19, 11, 7, 4, 2]


def test_a_limit_that_flattens_the_long_tail_says_so(caplog):
    """limit_train keeps one sample per class and shares the rest in proportion: on a steep tail the realised
    ratio n_max / n_min fell from 100 to 23 in silence."""
    with caplog.at_level(logging.WARNING, logger="etf_train"):
        b = build_data(
            "synthetic", num_classes=10, image_size=2, train_per_class=500, imbalance_ratio=100.0, limit_train=64
        )
    counts = torch.bincount(b.train_targets).tolist()
    assert max(counts) / min(counts) < 30  # the subset as before ...
    assert (
        f"n_max / n_min = {max(counts) / min(counts):.3g}" in caplog.text
        and "dataset.imbalance_ratio=100" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="etf_train"):  # a mild cut keeps the profile: no line
        build_data("synthetic", num_classes=5, image_size=2, train_per_class=40, imbalance_ratio=10.0, limit_train=43)
    assert "imbalance_ratio" not in caplog.text


def test_long_tail_groups_count_the_clean_labels():
    """With label noise the many/medium/few groups were formed from noisy counts: tail classes of 5-14 images read
    as many-shot (their flipped-in labels counted), and acc_few vanished."""
    b = build_data(
        "synthetic", num_classes=10, image_size=2, train_per_class=500, imbalance_ratio=100.0, label_noise=0.4
    )
    want = [round(500 * 100 ** (-c / 9)) for c in range(10)]  # the long tail the split was drawn with
    assert b.shot_counts(100.0).tolist() == want
    assert torch.bincount(b.train_targets, minlength=10).tolist() != want  # the noisy labels: not what the groups use
    assert b.shot_counts(1.0) is None


# ----------------------------------------------------------------------------- label noise


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_label_noise_flips_exactly_round_pn_train_labels_to_other_labels(p):
    """Catches a flip count other than round(p N), a flip to the same label, noisy positions that disagree with the labels, or noise applied before the subsets."""
    options = dict(num_classes=5, image_size=2, train_per_class=11, imbalance_ratio=2.0, limit_train=40)
    clean = build_data("synthetic", **options)
    b = build_data("synthetic", **options, label_noise=p)
    check_bundle(b)
    N = len(b.train_targets)
    assert N == 40 and torch.equal(b.clean_targets, clean.train_targets)
    assert int(b.noisy.sum()) == round(p * N) and b.noisy.dtype == torch.bool and b.noisy.shape == (N,)
    assert torch.equal(b.noisy, b.train_targets != b.clean_targets)  # every flipped label changed
    assert clean.noisy is None and clean.clean_targets is clean.train_targets
    assert _rows(b.eval_train).keys() == _rows(clean.eval_train).keys()  # the same samples, only labels differ


def test_label_noise_draws_the_new_label_uniformly_among_the_others():
    """Catches new labels biased towards a neighbour class (e.g. y + 1 only) or positions drawn from one class."""
    K, N = 5, 20_000
    targets = torch.arange(K).repeat(N // K)
    labels, noisy = flip_labels(targets, 0.4, K, seed=3)
    shift = ((labels - targets) % K)[noisy]
    assert int(shift.min()) >= 1 and scipy.stats.chisquare(torch.bincount(shift, minlength=K)[1:].numpy()).pvalue > 1e-3
    per_class = torch.bincount(targets[noisy], minlength=K).numpy()
    assert scipy.stats.chisquare(per_class).pvalue > 1e-3


def test_label_noise_is_fixed_by_split_seed_and_never_touches_test():
    """Catches noise drawn from the training seed or a global RNG (a resumed run would see other labels), or noisy test labels."""
    options = dict(num_classes=4, image_size=2, train_per_class=20, test_per_class=10, label_noise=0.25)
    b = build_data("synthetic", **options)
    torch.manual_seed(123)  # the global RNG plays no part
    again = build_data("synthetic", **options)
    other = build_data("synthetic", **options, split_seed=1)
    assert torch.equal(b.train_targets, again.train_targets) and torch.equal(b.noisy, again.noisy)
    assert not torch.equal(b.noisy, other.noisy)
    clean = build_data("synthetic", **{**options, "label_noise": 0.0})
    assert torch.equal(b.test_targets, clean.test_targets) and _rows(b.test) == _rows(clean.test)
    ufm = build_data("ufm", num_classes=4, per_class=10, label_noise=0.5)  # its test split is the train samples
    assert int(ufm.noisy.sum()) == 20
    assert [int(y) for _, y in ufm.test] == ufm.clean_targets.tolist() == ufm.test_targets.tolist()
    assert [int(y) for _, y in ufm.eval_train] == ufm.train_targets.tolist()


@pytest.mark.parametrize("mode", ["device", "dataloader"])
def test_both_loader_paths_serve_the_noisy_train_labels(mode):
    """Catches a loader path that reads the clean labels from the base dataset instead of the bundle's noisy ones."""
    b = build_data("synthetic", num_classes=4, image_size=3, train_per_class=10, test_per_class=5, label_noise=0.3)
    train, test, eval_train = build_loaders(b, 8, mode=mode)
    x_all = b.train_x.flatten(1)
    for x, y in _epochs(train, (1,)):
        positions = (
            (x.flatten(1)[:, None] == x_all[None]).all(-1).float().argmax(1)
        )  # rows are unique: find each sample
        assert torch.equal(y, b.train_targets[positions])
    assert torch.equal(torch.cat([y for _, y in eval_train]), b.train_targets)
    assert torch.equal(torch.cat([y for _, y in test]), b.test_targets)
    ufm = build_data("ufm", num_classes=4, per_class=10, label_noise=0.3)
    for x, y in _epochs(build_loaders(ufm, 8, mode=mode)[0], (2,)):
        assert torch.equal(y, ufm.train_targets[x])


def test_noisy_fit_counts_noisy_samples_predicted_as_their_noisy_label():
    """Catches train/noisy_fit counted over all samples, against the clean labels, or with the wrong denominator."""
    labels = torch.tensor([0, 1, 2, 3, 0, 1])  # given labels, noise included
    noisy = torch.tensor([True, False, True, True, False, False])
    pred = torch.tensor([0, 1, 1, 3, 2, 1])  # fits noisy samples 0 and 3, not 2
    assert [int(n) for n in noisy_fit(pred, labels, noisy)] == [2, 3]


# ----------------------------------------------------------------------------- samplers and loaders


def _batches(targets, B, *, epoch=0, seed=0, rank=0, world_size=1):
    s = ClassBalancedBatchSampler(targets, B, seed=seed, rank=rank, world_size=world_size)
    s.set_epoch(epoch)
    return [list(batch) for batch in s]


def test_class_balanced_batches_are_stratified_and_reshuffled_each_epoch():
    targets = torch.arange(5).repeat_interleave(20)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    epoch0, epoch1 = _batches(targets, 12, epoch=0), _batches(targets, 12, epoch=1)
    for batches in (epoch0, epoch1):
        assert sorted(i for b in batches for i in b) == list(range(100))
        assert [len(b) for b in batches] == [12] * 8 + [4]
        for batch in batches:
            counts = torch.bincount(targets[batch], minlength=5)
            assert counts.max() - counts.min() <= 1
    assert epoch0 != epoch1
    assert epoch0 == _batches(targets, 12, epoch=0) and epoch0 != _batches(targets, 12, epoch=0, seed=1)
    # imbalanced: the first batches still hold every class; classes that run out stop contributing
    tail = torch.arange(3).repeat_interleave(torch.tensor([30, 6, 3]))
    first = torch.bincount(tail[_batches(tail, 9)[0]], minlength=3)
    assert first.tolist() == [3, 3, 3]


@pytest.mark.parametrize("n_per_class, world_size", [(24, 3), (25, 3), (24, 1)])
def test_class_balanced_sharding_matches_distributed_sampler(n_per_class, world_size):
    targets = torch.arange(4).repeat_interleave(n_per_class)
    N = len(targets)
    per_rank = [_batches(targets, 10, epoch=2, rank=r, world_size=world_size) for r in range(world_size)]
    flat = [sorted(i for b in batches for i in b) for batches in per_rank]
    assert len({len(batches) for batches in per_rank}) == 1  # every rank takes the same number of steps
    assert all(len(f) == -(-N // world_size) for f in flat)  # DistributedSampler's padded share
    assert set().union(*flat) == set(range(N))
    if N % world_size == 0:
        assert sum(len(f) for f in flat) == N  # disjoint
    for batches in per_rank:
        for batch in batches:
            counts = torch.bincount(targets[batch], minlength=4)
            assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("kind", ["device", "dataloader"])
@pytest.mark.parametrize("class_balanced", [False, True])
def test_loaders_shard_train_and_evaluation_by_rank(class_balanced, kind):
    b = build_data("ufm", num_classes=4, per_class=15)  # x is the sample's position: the loaders show which samples
    seen = {"train": [], "test": [], "eval_train": []}
    for rank in range(3):
        loaders = build_loaders(b, 8, class_balanced=class_balanced, seed=5, rank=rank, world_size=3, mode=kind)
        set_epoch(loaders[0], 1)
        for key, loader in zip(seen, loaders):
            xs = torch.cat([x for x, _ in loader]).tolist()
            if key != "train":
                assert xs == sorted(xs)  # in order
            seen[key].append(xs)
    for key, shards in seen.items():
        flat = [i for s in shards for i in s]
        assert sorted(flat) == list(range(60)), key  # 60 = 3 * 20: disjoint and covering


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_train_loader_shuffle_follows_seed_and_epoch(loader):
    b = build_data("synthetic", num_classes=3, image_size=2, train_per_class=10)
    for class_balanced in (False, True):

        def order(epoch, seed=0):
            loader_ = build_loaders(b, 4, class_balanced=class_balanced, seed=seed, mode=loader)[0]
            set_epoch(loader_, epoch)
            return torch.cat([y for _, y in loader_]).tolist(), torch.cat([x for x, _ in loader_])

        (y0, x0), (y1, x1) = order(0), order(1)
        assert sorted(y0) == sorted(y1) == sorted(b.train_targets.tolist())
        assert not torch.equal(x0, x1) and torch.equal(x0, order(0)[1]) and not torch.equal(x0, order(0, seed=1)[1])
        # Replicates are independent: seeding by seed + epoch gave run seed=2 run seed=1's order one epoch earlier.
        seeds = {seed: [order(epoch, seed)[1] for epoch in range(4)] for seed in (1, 2)}
        assert not any(torch.equal(a, c) for a in seeds[1] for c in seeds[2]), class_balanced


def test_loader_with_workers_batches():
    b = build_data("synthetic", num_classes=3, image_size=4, train_per_class=8)
    train, test, eval_train = build_loaders(b, 5, num_workers=2, mode="dataloader")
    # Train workers start afresh each epoch, seeded from (seed, rank, epoch), so a resumed run draws the same
    # augmentation; the evaluation workers draw nothing random and persist.
    assert not train.persistent_workers and test.persistent_workers and eval_train.persistent_workers
    x, y = next(iter(train))
    assert x.shape == (5, 3, 4, 4) and y.dtype == torch.long
    assert sum(len(y) for _, y in eval_train) == 24


# ----------------------------------------------------------------------------- torchvision CIFAR files


@pytest.fixture
def cifar_files_without_md5(monkeypatch):
    """Let torchvision read the miniature files below: only its md5 comparison (of the real archives) is replaced
    by an existence check; the pickle reading, layout and metadata code is torchvision's own."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def write_cifar(
    root: Path, kind: int, per_file: int, rng: np.random.Generator, same: bool = False
) -> tuple[np.ndarray, list, np.ndarray, list]:
    """Miniature CIFAR-10/100 in torchvision's python-pickle layout; returns (train HWC, labels, test HWC, labels).
    same: every train image is one and the same random image."""
    K = kind
    folder, label_key = (
        (root / "cifar-10-batches-py", "labels") if kind == 10 else (root / "cifar-100-python", "fine_labels")
    )
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if kind == 10 else ["train"]
    folder.mkdir(parents=True)

    image = rng.integers(0, 256, size=(1, 3 * 32 * 32), dtype=np.uint8)

    def write(name, n, same=False):
        data = (
            image.repeat(n, 0) if same else rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        )  # rows: R, G, B planes
        labels = [int(c) for c in rng.permutation(np.arange(n) % K)]
        entry = {"data": data, label_key: labels}
        if kind == 100:
            entry["coarse_labels"] = [c // 5 for c in labels]
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        return data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), labels

    train = [write(name, per_file, same) for name in train_files]
    test_x, test_y = write("test_batch" if kind == 10 else "test", K)
    meta_name, meta_key = ("batches.meta", "label_names") if kind == 10 else ("meta", "fine_label_names")
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"class{c}" for c in range(K)]}, f)
    return np.concatenate([x for x, _ in train]), [y for _, ys in train for y in ys], test_x, test_y


def test_cifar10_reads_torchvision_files_and_augments_only_train(tmp_path, cifar_files_without_md5):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, 10, per_file=10, rng=np.random.default_rng(0))
    b = build_data("cifar10", root=str(tmp_path), download=False)
    check_bundle(b)
    assert (b.num_classes, b.in_shape, len(b.train), len(b.test)) == (10, (3, 32, 32), 50, 10)
    assert b.train_targets.tolist() == train_y
    for i in (0, 13):
        assert torch.allclose(b.eval_train[i][0], normalise(train_x[i], CIFAR10_MEAN, CIFAR10_STD), atol=1e-6)
    assert torch.allclose(b.test[3][0], normalise(test_x[3], CIFAR10_MEAN, CIFAR10_STD), atol=1e-6)
    assert [int(y) for _, y in b.test] == test_y

    # every augmented draw is a 32 px crop of the image zero-padded by 4 (pixel 0, before normalising), maybe mirrored
    padded = normalise(np.pad(train_x[0], ((4, 4), (4, 4), (0, 0))), CIFAR10_MEAN, CIFAR10_STD)
    crops = {
        (i, j, f): padded[:, i : i + 32, j : j + 32].flip(-1) if f else padded[:, i : i + 32, j : j + 32]
        for i in range(9)
        for j in range(9)
        for f in (False, True)
    }
    torch.manual_seed(0)
    draws = [b.train[0][0] for _ in range(40)]
    found = [[key for key, c in crops.items() if torch.allclose(d, c, atol=1e-6)] for d in draws]
    assert all(len(keys) == 1 for keys in found)
    offsets = [keys[0] for keys in found]
    assert {f for _, _, f in offsets} == {False, True}
    assert any({i, j} & {0, 8} for i, j, _ in offsets)  # shifts of the full 4 px occur
    assert any(not torch.allclose(d, b.eval_train[0][0]) for d in draws)
    plain = build_data("cifar10", root=str(tmp_path), download=False, augment=False)
    assert torch.equal(plain.train[0][0], b.eval_train[0][0])


def test_cifar100_reads_fine_labels(tmp_path, cifar_files_without_md5):
    train_x, train_y, _, test_y = write_cifar(tmp_path, 100, per_file=200, rng=np.random.default_rng(1))
    b = build_data("cifar100", root=str(tmp_path), download=False, limit_train=150)
    check_bundle(b, sample_every=7)
    assert (b.num_classes, len(b.train), len(b.test)) == (100, 150, 100)
    assert torch.bincount(b.train_targets).tolist() == [2] * 50 + [1] * 50  # stratified: the spare 50 by class order
    assert [int(y) for _, y in b.test] == test_y


def test_cifar_missing_files_are_one_line_errors_naming_the_root(tmp_path, monkeypatch):
    # torchvision's real download path, aimed at a closed local port so it fails the same way with or without network
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    root = tmp_path / "nowhere"
    with pytest.raises(EtfTrainError) as info:
        build_data("cifar10", root=str(root), download=True)
    message = str(info.value)
    assert "\n" not in message and str(root.resolve()) in message and "cifar-10-batches-py" in message
    assert "download failed" in message
    with pytest.raises(
        EtfTrainError, match=r"dataset cifar100: .*download=false.*cifar-100-python/ folder under"
    ) as info:
        build_data("cifar100", root=str(root), download=False)
    assert "\n" not in str(info.value)


def write_mnist(folder: Path, train: np.ndarray, test: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """torchvision's raw big-endian idx files (no md5 for these) under folder/raw/, labels i % 10;
    returns {"train": (images, labels), "t10k": (images, labels)}."""
    raw = folder / "raw"
    raw.mkdir(parents=True)
    split = {}
    for prefix, images in (("train", train), ("t10k", test)):
        n = len(images)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + labels.tobytes())
        split[prefix] = images, labels
    return split


@pytest.mark.parametrize(
    "name, folder, stats", [("mnist", "MNIST", (0.1307, 0.3081)), ("fashion_mnist", "FashionMNIST", (0.2860, 0.3530))]
)
def test_mnist_like_reads_idx_files_and_crops_without_flipping(tmp_path, name, folder, stats):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    split = write_mnist(tmp_path / folder, pixels[:30], pixels[30:])
    b = build_data(name, root=str(tmp_path), download=False)
    check_bundle(b)
    assert (b.num_classes, b.in_shape, len(b.train), len(b.test)) == (10, (1, 28, 28), 30, 10)
    assert b.train_targets.tolist() == split["train"][1].tolist()
    mean, std = stats
    expected = (torch.tensor(split["train"][0][4], dtype=torch.float32) / 255 - mean) / std
    assert torch.allclose(b.eval_train[4][0][0], expected, atol=1e-6)
    padded = (torch.tensor(np.pad(split["train"][0][4], 2), dtype=torch.float32) / 255 - mean) / std
    crops = {(i, j): padded[i : i + 28, j : j + 28] for i in range(5) for j in range(5)}
    torch.manual_seed(0)
    draws = [b.train[4][0][0] for _ in range(20)]
    assert all(
        any(torch.allclose(x, c, atol=1e-6) for c in crops.values()) for x in draws
    )  # up to 2 px shifts, no mirror
    assert any(not torch.equal(x, expected) for x in draws)


# ----------------------------------------------------------------------------- image folders


def test_image_folder_reads_class_folders(tmp_path):
    rng = np.random.default_rng(2)
    train_px = write_folder(tmp_path, "train", {"cat": 3, "ant": 2, "bee": 4}, 8, rng)
    test_px = write_folder(tmp_path, "val", {"cat": 1, "ant": 1, "bee": 2}, 8, rng)
    b = build_data("image_folder", root=str(tmp_path), image_size=8)
    check_bundle(b)
    assert (b.num_classes, b.in_shape) == (3, (3, 8, 8))
    assert b.train_targets.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]  # ant, bee, cat
    for i, px in enumerate(train_px):
        assert torch.allclose(b.eval_train[i][0], normalise(px, IMAGENET_MEAN, IMAGENET_STD), atol=1e-6)
    assert torch.allclose(b.test[3][0], normalise(test_px[3], IMAGENET_MEAN, IMAGENET_STD), atol=1e-6)
    torch.manual_seed(0)
    assert any(not torch.equal(b.train[4][0], b.eval_train[4][0]) for _ in range(10))

    loaders = [build_loaders(b, 4, num_workers=2, seed=s)[0] for s in (3, 3, 4)]
    first = [torch.cat([x for x, _ in loader]) for loader in loaders]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])  # shuffle and augmentation seeded


def test_files_image_folder_cannot_read_are_named_in_one_line(tmp_path, caplog):
    """ImageFolder leaves out files of other extensions (.gif, .heic, ...) without a word: a class could train on
    a fraction of its folder."""
    rng = np.random.default_rng(4)
    write_folder(tmp_path, "train", {"a": 2, "b": 2}, 8, rng)
    write_folder(tmp_path, "test", {"a": 1, "b": 1}, 8, rng)
    for name in ("x.gif", "y.gif", "notes.txt", ".DS_Store"):
        (tmp_path / "train" / "a" / name).write_bytes(b"not read")
    with caplog.at_level(logging.WARNING, logger="etf_train"):
        b = build_data("image_folder", root=str(tmp_path), image_size=8, cache="off")
    assert len(b.train) == 4
    lines = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert lines == [
        f"dataset image_folder: 3 files under {tmp_path / 'train'} are not images torchvision reads and "
        "are left out (.gif x2, .txt x1)"
    ]


def test_dataloader_draws_do_not_depend_on_the_worker_count_and_leave_the_global_rng_alone(tmp_path):
    """Each worker drew from its own seed, so 0, 1 and 2 workers gave other augmentations of the same images: a
    resume with another loader.num_workers (a neutral key) was not the run it continued. Checked with real random
    augmentation (image folder: random crop and flip) and with mixup's coin and lambda drawn in the collate."""
    rng = np.random.default_rng(5)
    write_folder(tmp_path, "train", {"a": 6, "b": 5}, 12, rng)
    write_folder(tmp_path, "test", {"a": 1, "b": 1}, 12, rng)
    b = build_data("image_folder", root=str(tmp_path), image_size=8, cache="off")
    for mix in (None, build_mix("mixup", alpha=1.0, prob=0.5, num_classes=2)):
        epochs = {}
        for workers in (0, 1, 2):
            options = {} if mix is None else {"mix": mix}
            loader, test, eval_train = build_loaders(b, 4, num_workers=workers, seed=7, mode="dataloader", **options)
            for epoch in (1, 2):
                set_epoch(loader, epoch)
                state = torch.get_rng_state()
                epochs[workers, epoch] = [torch.cat(part) for part in zip(*loader)]
                for _ in (*test, *eval_train):  # evaluation passes: a base seed per iterator would come from it
                    pass
                assert torch.equal(torch.get_rng_state(), state)  # dropout's stream is not the data's
        for workers in (1, 2):
            for epoch in (1, 2):
                assert all(torch.equal(u, v) for u, v in zip(epochs[0, epoch], epochs[workers, epoch])), (
                    workers,
                    epoch,
                )
        assert not torch.equal(epochs[0, 1][0], epochs[0, 2][0])  # another epoch, other draws


def test_imagenet_transforms_resize_and_centre_crop_for_test(tmp_path):
    rng = np.random.default_rng(3)
    write_folder(tmp_path, "train", {"a": 2, "b": 2}, 20, rng)
    write_folder(tmp_path, "test", {"a": 1, "b": 1}, 20, rng)
    b = build_data("imagenet", root=str(tmp_path), image_size=14)
    check_bundle(b)
    assert b.in_shape == (3, 14, 14) and tuple(b.train[0][0].shape) == (3, 14, 14)


def test_image_folder_errors_are_one_line(tmp_path):
    rng = np.random.default_rng(4)

    def error(root, match):
        with pytest.raises(EtfTrainError, match=match) as info:
            build_data("image_folder", root=str(root), image_size=8)
        assert "\n" not in str(info.value)

    error(tmp_path / "missing", "no train/ and test/")
    (tmp_path / "empty").mkdir()
    error(tmp_path / "empty", "no train/ and test/")
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    (tmp_path / "noclass" / "test").mkdir()
    error(tmp_path / "noclass", "train: Couldn't find any class folder")

    write_folder(tmp_path / "hollow", "train", {"a": 2}, 8, rng)
    write_folder(tmp_path / "hollow", "test", {"a": 1, "b": 0}, 8, rng)
    (tmp_path / "hollow" / "test" / "b" / "notes.txt").write_text("no images here")
    (tmp_path / "hollow" / "train" / "b").mkdir()
    error(tmp_path / "hollow", "no valid file for the classes b")

    write_folder(tmp_path / "differ", "train", {"a": 1, "b": 1}, 8, rng)
    write_folder(tmp_path / "differ", "test", {"a": 1, "c": 1}, 8, rng)
    error(tmp_path / "differ", "different class folders .*b, c")

    write_folder(tmp_path / "broken", "train", {"a": 2, "b": 2}, 8, rng)
    write_folder(tmp_path / "broken", "test", {"a": 1, "b": 1}, 8, rng)
    bad = tmp_path / "broken" / "train" / "b" / "01.png"
    bad.write_bytes(bad.read_bytes()[:60])
    b = build_data("image_folder", root=str(tmp_path / "broken"), image_size=8, cache="off")
    b.eval_train[2]  # the intact image of the same class still loads
    with pytest.raises(EtfTrainError, match=f"cannot read image {bad}") as info:
        b.eval_train[3]
    assert "\n" not in str(info.value)
    error(tmp_path / "broken", f"cannot read image {bad}")  # decoded into the cache (cache=auto): at once
    assert not (tmp_path / "broken" / ".etf_cache").exists()


# ----------------------------------------------------------------------------- image folders decoded once (cache.py)


def _mixed_folder(root: Path, rng: np.random.Generator) -> None:
    """Images the resizing changes and the loader converts: not square, larger and smaller than 8 px, grey, RGBA,
    JPEG; class folders written out of ImageFolder's order (upper case sorts first)."""
    shapes = [(13, 9), (9, 13), (6, 6), (8, 8), (20, 11)]
    kinds = [(3, "png"), (1, "png"), (4, "png"), (3, "jpg")]  # channels: RGB, L, RGBA
    for split, n in (("train", 5), ("test", 2)):
        for c, name in enumerate(("zebra", "ant", "Moth")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                (h, w), (channels, ext) = shapes[(i + c) % 5], kinds[(i + 2 * c) % 4]
                pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
                Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(root / split / name / f"{i}.{ext}")


def _count_decodes(monkeypatch) -> list:
    decodes, real = [], cache._decode
    monkeypatch.setattr(cache, "_decode", lambda *a: decodes.append(1) or real(*a))
    return decodes


def test_cached_image_folder_serves_the_pixels_and_labels_of_the_dataloader_path(tmp_path):
    """Catches channels left in HWC order, a missing resize / centre crop / RGB conversion, another interpolation,
    and samples or classes in another order than ImageFolder's (the limit picks rows of both the same way)."""
    _mixed_folder(tmp_path, np.random.default_rng(11))
    options = {"root": str(tmp_path), "image_size": 8, "limit_train": 9}
    cached, files = (build_data("image_folder", **options, cache=c) for c in ("on", "off"))
    assert files.train_x is None and cached.train_x.dtype == torch.uint8 and cached.train_x.shape == (9, 3, 8, 8)
    assert cached.class_names == files.class_names == ("Moth", "ant", "zebra")
    assert torch.equal(cached.train_targets, files.train_targets) and torch.equal(
        cached.test_targets, files.test_targets
    )
    for pixels, ds in ((cached.train_x, files.eval_train), (cached.test_x, files.test)):
        assert len(pixels) == len(ds)
        for i in range(len(ds)):
            hwc = pixels[i].permute(1, 2, 0).numpy()
            assert torch.allclose(normalise(hwc, IMAGENET_MEAN, IMAGENET_STD), ds[i][0], atol=1e-6), i
    device, loader = build_loaders(cached, 4), build_loaders(files, 4)
    assert isinstance(device[0], DeviceLoader) and isinstance(loader[0], DataLoader)
    for split in (1, 2):  # test, eval_train: the batches agree bit for bit
        for (xd, yd), (xl, yl) in zip(device[split], loader[split], strict=True):
            assert torch.equal(xd, xl) and torch.equal(yd, yl)


def test_the_cache_file_is_read_back_and_rebuilt_when_a_file_changes_or_is_added(tmp_path, monkeypatch):
    """Catches a decode on every run, a stale cache served after an image was rewritten (same name and byte size:
    only its mtime tells) or added, and replaced cache files left behind."""
    rng = np.random.default_rng(12)
    write_folder(tmp_path, "train", {"a": 3, "b": 3}, 8, rng)
    write_folder(tmp_path, "test", {"a": 1, "b": 1}, 8, rng)
    decodes = _count_decodes(monkeypatch)

    def build(size=8):
        return build_data("image_folder", root=str(tmp_path), image_size=size)

    def saved():
        return sorted(p.name for p in (tmp_path / ".etf_cache").iterdir())

    first = build()
    assert len(decodes) == 1 and len(saved()) == 1 and saved()[0].startswith("8px-")
    assert torch.equal(build().train_x, first.train_x) and len(decodes) == 1  # read back, not decoded

    edited, before = tmp_path / "train" / "b" / "01.png", saved()
    size = edited.stat().st_size
    for _ in range(1000):  # a different image of the same byte size (random 8x8 PNGs barely vary in size)
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(edited)
        if edited.stat().st_size == size:
            break
    assert edited.stat().st_size == size
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))  # coarse clocks too
    after_edit = build()
    assert len(decodes) == 2 and torch.equal(after_edit.train_x[4], torch.from_numpy(pixels).permute(2, 0, 1))
    assert len(saved()) == 1 and saved() != before

    stamp = edited.stat().st_mtime_ns  # rewritten with size and mtime kept, as `cp -p` or `rsync -a` leave a copy
    for _ in range(1000):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(edited)
        if edited.stat().st_size == size:
            break
    os.utime(edited, ns=(stamp, stamp))
    assert (edited.stat().st_size, edited.stat().st_mtime_ns) == (size, stamp)
    assert torch.equal(build().train_x[4], torch.from_numpy(pixels).permute(2, 0, 1)) and len(decodes) == 3
    decodes.pop()

    Image.fromarray(pixels).save(tmp_path / "train" / "a" / "09.png")
    added = build()
    assert len(decodes) == 3 and len(added.train_x) == 7 and added.train_targets.tolist() == [0] * 4 + [1] * 3
    assert len(saved()) == 1  # the replaced files are gone
    build(size=6)
    assert len(decodes) == 4 and [n[:4] for n in saved()] == ["6px-", "8px-"]  # another size keeps its own file


def test_a_read_only_data_folder_is_cached_in_the_user_cache_folder(tmp_path, monkeypatch):
    """Catches a crash, or a decode on every run, when <root>/.etf_cache cannot be written."""
    root = tmp_path / "data"
    write_folder(root, "train", {"a": 2, "b": 2}, 8, np.random.default_rng(13))
    write_folder(root, "test", {"a": 1, "b": 1}, 8, np.random.default_rng(14))
    (root / ".etf_cache").write_text("")  # mkdir fails there as on a read-only mount (chmod does not stop root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    decodes = _count_decodes(monkeypatch)
    first = build_data("image_folder", root=str(root), image_size=8)
    assert len(list((tmp_path / "xdg" / "etf-train").glob("*/8px-*.pt"))) == 1
    assert torch.equal(build_data("image_folder", root=str(root), image_size=8).test_x, first.test_x)
    assert len(decodes) == 1


def test_a_decode_killed_while_writing_leaves_no_cache_file(tmp_path, monkeypatch):
    """Catches writing under the cache file's own name: a kill there left a truncated file for the next run."""
    write_folder(tmp_path, "train", {"a": 2, "b": 2}, 8, np.random.default_rng(15))
    write_folder(tmp_path, "test", {"a": 1, "b": 1}, 8, np.random.default_rng(16))

    def killed(obj, f):
        f.write(b"PK\x03\x04 the first bytes of a zip")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(torch, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            build_data("image_folder", root=str(tmp_path), image_size=8)
    assert not list((tmp_path / ".etf_cache").iterdir())
    assert build_data("image_folder", root=str(tmp_path), image_size=8).train_x.shape == (4, 3, 8, 8)


def test_cache_budget_auto_falls_back_in_one_info_line_and_on_refuses_with_the_numbers(tmp_path, monkeypatch, caplog):
    """Catches auto decoding past its budget (ImageNet at any size from 32 px) or silently, on past the memory, and
    the on / off spellings YAML turns into booleans."""
    write_folder(tmp_path, "train", {"a": 3, "b": 3}, 8, np.random.default_rng(17))
    write_folder(tmp_path, "test", {"a": 1, "b": 1}, 8, np.random.default_rng(18))

    def build(c):
        return build_data("image_folder", root=str(tmp_path), image_size=8, cache=c)

    monkeypatch.setattr(cache, "available_memory", lambda: 4000)  # 8 images of 3x8x8: 1,536 bytes > 4000 / 4
    with caplog.at_level(logging.INFO, logger="etf_train"):
        auto = build("auto")
    assert auto.train_x is None and all(isinstance(loader, DataLoader) for loader in build_loaders(auto, 4))
    said = [r.getMessage() for r in caplog.records if "dataset.cache" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]
    assert "8 images of 3x8x8 uint8: 1.54 kB) they exceed the budget of 1 kB" in said[0] and "every epoch" in said[0]
    assert build("on").train_x is not None and build(True).train_x is not None and build(False).train_x is None

    monkeypatch.setattr(cache, "available_memory", lambda: 1500)
    with pytest.raises(
        EtfTrainError, match=r"dataset.cache=on: .*\(8 images of 3x8x8 uint8: 1.54 kB\) do not fit the 1.5 kB"
    ) as info:
        build("on")
    assert "\n" not in str(info.value)
    with pytest.raises(EtfTrainError, match="dataset.cache='yes' must be one of auto, on, off"):
        build("yes")
    with pytest.raises(EtfTrainError, match="unknown option.*cache"):  # RandomResizedCrop needs the full images
        build_data("imagenet", root=str(tmp_path), cache="on")

    terabyte, where = 10**12, Path("/data/imagenet")
    assert not cache.should_decode("auto", 1_331_167, 224, terabyte, where)  # 200 GB
    assert not cache.should_decode("auto", 1_331_167, 32, terabyte, where)  # 4.1 GB > 2 GiB
    assert cache.should_decode("auto", 60_000, 32, 8 * 10**9, where)  # CIFAR-10: 184 MB
    assert not cache.should_decode("off", 60_000, 32, terabyte, where)
    with pytest.raises(EtfTrainError, match="1,331,167 images of 3x224x224 uint8: 200 GB.*do not fit the 16 GB"):
        cache.should_decode("on", 1_331_167, 224, 16 * 10**9, where)


# ----------------------------------------------------------------------------- device path vs DataLoader path


def _epochs(loader, epochs=(0,)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for epoch in epochs:
        if epoch is not None:
            set_epoch(loader, epoch)
        out += [(x, y) for x, y in loader]
    return out


@pytest.mark.parametrize("class_balanced", [False, True])
def test_device_path_serves_the_dataloader_index_batches(class_balanced):
    b = build_data("ufm", num_classes=4, per_class=15, imbalance_ratio=3.0, limit_test=25)  # x: the sample's position
    for rank in range(3):
        by_path = {}
        for kind in ("device", "dataloader"):
            train, test, eval_train = build_loaders(
                b, 7, class_balanced=class_balanced, seed=4, rank=rank, world_size=3, mode=kind
            )
            by_path[kind] = (
                [len(train), len(test), len(eval_train)],
                [
                    [(x.tolist(), y.tolist()) for x, y in batches]
                    for batches in (_epochs(train, (0, 3)), _epochs(test, (None,)), _epochs(eval_train, (None,)))
                ],
            )
        assert by_path["device"] == by_path["dataloader"], rank
        lengths, (train_batches, test_batches, _) = by_path["device"]
        assert lengths[0] * 2 == len(train_batches) and len(test_batches) == lengths[1] and lengths[0] > 1
        assert all(y == b.train_targets[x].tolist() for x, y in train_batches)
        assert all(y == b.train_targets[x].tolist() for x, y in test_batches)  # ufm tests on train samples


def _mini_cifar(root: Path, same: bool = False):
    write_cifar(root, 10, per_file=10, rng=np.random.default_rng(7), same=same)
    return dict(name="cifar10", root=str(root), download=False)


@pytest.mark.parametrize("dataset", ["synthetic", "digits", "cifar10", "cifar10-plain"])
def test_device_path_batches_equal_the_dataloader_ones_without_augmentation(dataset, tmp_path, cifar_files_without_md5):
    # limits (subsets of the tensors), rank sharding and a partial last batch; test and eval_train are never augmented
    options = dict(limit_train=37, limit_test=None if dataset.startswith("cifar") else 23)  # mini CIFAR: 10 test images
    if dataset.startswith("cifar"):
        options.update(_mini_cifar(tmp_path), augment=dataset == "cifar10")
    else:
        options["name"] = dataset
    b = build_data(**options)
    assert b.train_x is not None and b.test_x is not None
    compare = ["test", "eval_train"] + (["train"] if dataset != "cifar10" else [])
    for rank in range(2):
        loaders = {
            kind: build_loaders(b, 8, seed=1, rank=rank, world_size=2, mode=kind) for kind in ("device", "dataloader")
        }
        for i, split in enumerate(("train", "test", "eval_train")):
            got = {kind: _epochs(loaders[kind][i], (2,) if split == "train" else (None,)) for kind in loaders}
            assert len(got["device"]) == len(got["dataloader"]) == len(loaders["device"][i]) > 0
            for (xd, yd), (xl, yl) in zip(got["device"], got["dataloader"]):
                assert torch.equal(yd, yl) and xd.device == torch.device("cpu") and xd.dtype == torch.float32
                if split in compare:
                    assert torch.equal(xd, xl), (split, rank)  # bit for bit: the same ToTensor + Normalize operations
                else:
                    assert xd.shape == xl.shape and not torch.equal(xd, xl)


def _crops(padded: torch.Tensor, p: int) -> tuple[torch.Tensor, list[tuple[int, int, bool]]]:
    """All (2p+1)^2 crops of a padded image, plain and mirrored: ((n, C, H, W), [(di, dj, mirrored)])."""
    H, W = padded.shape[1] - 2 * p, padded.shape[2] - 2 * p
    keys = [(i - p, j - p, f) for i in range(2 * p + 1) for j in range(2 * p + 1) for f in (False, True)]
    crops = [padded[:, i + p : i + p + H, j + p : j + p + W] for i, j, _ in keys]
    return torch.stack([c.flip(-1) if f else c for c, (_, _, f) in zip(crops, keys)]), keys


def _one_image_folder(root: Path, pixels: np.ndarray, per_class: dict[str, int]) -> None:
    """Class folders a/ and b/ holding per_class[split] copies of one PNG each."""
    for split, n in per_class.items():
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(pixels).save(root / split / name / f"{i:02d}.png")


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "image_folder", "image_folder flip=false"])
def test_both_paths_augment_with_the_same_statistics(dataset, tmp_path, cifar_files_without_md5):
    # one fixed image repeated over the train split: every augmented draw is one of its crops, so the offsets show
    rng = np.random.default_rng(8)
    if dataset == "cifar10":
        pixels = write_cifar(tmp_path, 10, per_file=10, rng=rng, same=True)[0][0]  # (32, 32, 3)
        b = build_data("cifar10", root=str(tmp_path), download=False)
        p, flips, stats = 4, True, (CIFAR10_MEAN, CIFAR10_STD)
    elif dataset.startswith("image_folder"):  # device path: the decoded cache; DataLoader path: the PNG files
        pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        _one_image_folder(tmp_path, pixels, {"train": 25, "test": 1})
        flips = not dataset.endswith("flip=false")  # dataset.flip=false: the crop stays, the mirror goes (digits)
        b = build_data("image_folder", root=str(tmp_path), image_size=32, flip=flips)
        assert b.train_x is not None
        p, stats = 4, (IMAGENET_MEAN, IMAGENET_STD)
    else:
        one = rng.integers(0, 256, size=(1, 28, 28), dtype=np.uint8)
        write_mnist(tmp_path / "MNIST", one.repeat(50, 0), one.repeat(10, 0))
        b = build_data("mnist", root=str(tmp_path), download=False)
        pixels, p, flips, stats = one.transpose(1, 2, 0), 2, False, ((0.1307,), (0.3081,))
    crops, keys = _crops(normalise(np.pad(pixels, ((p, p), (p, p), (0, 0))), *stats), p)  # zero pixels around

    torch.manual_seed(0)  # the DataLoader path without workers draws from the global generator
    seen = {}
    for kind in ("device", "dataloader"):
        train = build_loaders(b, 25, seed=3, mode=kind)[0]
        draws = torch.cat([x for x, _ in _epochs(train, range(40))])  # (2000, C, H, W)
        best = torch.cdist(draws.flatten(1), crops.flatten(1)).topk(2, largest=False)  # (2000, n) distances
        assert bool((best.values[:, 0] < 0.1).all()) and bool((best.values[:, 1] > 10).all())  # exactly one crop each
        found = torch.tensor([keys[k][:2] for k in best.indices[:, 0]]) + p  # offsets shifted to 0..2p
        mirrored = torch.tensor([keys[k][2] for k in best.indices[:, 0]], dtype=torch.float64)
        counts = torch.stack([torch.bincount(found[:, a], minlength=2 * p + 1) for a in (0, 1)])  # (2, 2p+1)
        for axis in counts:
            assert scipy.stats.chisquare(axis.numpy()).pvalue > 1e-3, (kind, axis)  # uniform on [-p, p]
        assert (abs(mirrored.mean() - 0.5) < 0.05) if flips else (mirrored.sum() == 0), kind
        seen[kind] = counts, draws.mean((0, 2, 3)), draws.std((0, 2, 3))
    for a in range(2):  # the two paths' offset distributions agree
        table = torch.stack([seen[kind][0][a] for kind in seen]).numpy()
        assert scipy.stats.chi2_contingency(table).pvalue > 1e-3
    expected_mean, expected_std = crops.mean((0, 2, 3)), crops.std((0, 2, 3))  # uniform over offsets (and flips)
    for _, mean, std in seen.values():
        assert torch.allclose(mean, expected_mean, atol=0.02) and torch.allclose(std, expected_std, atol=0.02)
    assert torch.allclose(seen["device"][1], seen["dataloader"][1], atol=0.02)
    assert torch.allclose(seen["device"][2], seen["dataloader"][2], atol=0.02)


def test_device_augmentation_is_seeded_by_seed_rank_and_epoch(tmp_path, cifar_files_without_md5):
    b = build_data(**_mini_cifar(tmp_path, same=True))  # one image 50 times: batches differ only by augmentation

    def epoch(e, seed=0, rank=0, world_size=1):
        loader = build_loaders(b, 16, seed=seed, rank=rank, world_size=world_size, mode="device")[0]
        set_epoch(loader, e)
        return torch.cat([x for x, _ in loader])

    first = epoch(1)
    assert torch.equal(first, epoch(1))  # rebuilt (as after a resumption): the same batches
    assert not torch.equal(first, epoch(2)) and not torch.equal(first, epoch(1, seed=1))
    assert not torch.equal(epoch(1, rank=0, world_size=2), epoch(1, rank=1, world_size=2))
    loader = build_loaders(b, 16, mode="device")[0]
    set_epoch(loader, 1)
    assert torch.equal(torch.cat([x for x, _ in loader]), first) and torch.equal(
        torch.cat([x for x, _ in loader]), first
    )
    plain = build_loaders(build_data(**_mini_cifar(tmp_path / "plain", same=True), augment=False), 16, mode="device")[0]
    assert len({x.numpy().tobytes() for x in first}) > 40
    assert len({x.numpy().tobytes() for batch, _ in plain for x in batch}) == 1


def test_loader_option_auto_picks_the_path_and_device_refuses_image_files(tmp_path):
    b = build_data("synthetic", num_classes=3, image_size=4, train_per_class=8)
    assert all(isinstance(loader, DeviceLoader) for loader in build_loaders(b, 4))
    assert all(isinstance(loader, DataLoader) for loader in build_loaders(b, 4, mode="dataloader"))
    with pytest.raises(EtfTrainError, match="loader.mode='gpu' must be one of auto, device, dataloader"):
        build_loaders(b, 4, mode="gpu")

    rng = np.random.default_rng(9)
    write_folder(tmp_path, "train", {"a": 2, "b": 2}, 8, rng)
    write_folder(tmp_path, "test", {"a": 1, "b": 1}, 8, rng)
    folder = build_data("image_folder", root=str(tmp_path), image_size=8, cache="off")
    assert folder.train_x is None and all(isinstance(loader, DataLoader) for loader in build_loaders(folder, 4))
    cached = build_data("image_folder", root=str(tmp_path), image_size=8)  # cache=auto: a tiny folder is decoded
    assert all(isinstance(loader, DeviceLoader) for loader in build_loaders(cached, 4))
    imagenet = build_data("imagenet", root=str(tmp_path), image_size=8)
    for bundle in (folder, imagenet):
        with pytest.raises(
            EtfTrainError, match="loader.mode=device needs a dataset held in memory.*use loader.mode=dataloader"
        ) as info:
            build_loaders(bundle, 4, mode="device")
        assert "\n" not in str(info.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_path_on_cuda_matches_cpu(tmp_path, cifar_files_without_md5):
    b = build_data(**_mini_cifar(tmp_path))
    cpu = build_loaders(b, 16, mode="device")
    cuda = build_loaders(b, 16, mode="device", device="cuda")
    for split in (1, 2):
        for (xc, yc), (xg, yg) in zip(cpu[split], cuda[split]):
            assert xg.is_cuda and yg.is_cuda and torch.equal(yc, yg.cpu())
            assert torch.allclose(xc, xg.cpu(), atol=1e-6)
    set_epoch(cuda[0], 1)
    x, y = next(iter(cuda[0]))
    assert x.is_cuda and x.shape == (16, 3, 32, 32) and x.dtype == torch.float32


# --- random_crop_flip against hand-made crops and mirrors (mutation gaps) ------------------------


def test_random_crop_flip_mirrors_each_sample_independently():
    """Catches one flip decision for the whole batch, a flip along the wrong axis, or a flip probability other than 1/2."""
    H, W, B, seeds = 5, 7, 400, range(5)
    image = torch.arange(H * W, dtype=torch.uint8).reshape(1, 1, H, W)  # no two columns alike: image != mirror
    mirror = image.flip(-1)
    assert not torch.equal(image, mirror)
    total = 0
    for seed in seeds:
        out = random_crop_flip(
            image.repeat(B, 1, 1, 1), padding=0, flip=True, generator=torch.Generator().manual_seed(seed)
        )
        assert out.shape == (B, 1, H, W) and out.dtype == torch.uint8
        plain = (out == image).flatten(1).all(1)
        mirrored = (out == mirror).flatten(1).all(1)
        assert bool((plain ^ mirrored).all()), seed  # every output is exactly the image or its left-right mirror
        n = int(mirrored.sum())
        assert 0 < n < B and abs(n - B / 2) <= 4.5 * math.sqrt(B / 4), (seed, n)  # Binomial(400, 1/2): sd 10
        total += n
    N = B * len(seeds)
    assert abs(total - N / 2) <= 4.5 * math.sqrt(N / 4), total  # pooled: sd 22, so p = 0.4 (800 of 2000) fails


def test_random_crop_pads_with_zeros_and_draws_offsets_per_sample():
    """Catches a crop window off by the padding, non-zero padding, offsets outside/short of {0..2p}, one offset for the whole batch, or i = j."""
    C, H, W, B, p = 2, 5, 6, 400, 2
    image = (torch.arange(C * H * W, dtype=torch.float32) + 1).reshape(1, C, H, W)  # no zero pixel: padding shows
    padded = torch.zeros(C, H + 2 * p, W + 2 * p)
    padded[:, p : p + H, p : p + W] = image[0]
    crops = {(i, j): padded[:, i : i + H, j : j + W] for i in range(2 * p + 1) for j in range(2 * p + 1)}
    out = random_crop_flip(image.repeat(B, 1, 1, 1), padding=p, flip=False, generator=torch.Generator().manual_seed(4))
    assert out.shape == (B, C, H, W)
    offsets = []
    for x in out:
        found = [key for key, crop in crops.items() if torch.equal(x, crop)]
        assert len(found) == 1, found  # exactly one window of the zero-padded image, all channels together
        offsets.append(found[0])
    assert len(set(offsets)) > 1
    assert set(offsets) == set(crops)  # all (2p+1)^2 offsets occur (each has probability 1/25; 400 draws)
    assert len({i for i, _ in offsets}) > 1 and len({j for _, j in offsets}) > 1
    assert any(i != j for i, j in offsets)


@pytest.mark.parametrize("class_balanced", [False, True])
@pytest.mark.parametrize(("n", "sizes"), [(129, [129]), (130, [128, 2]), (257, [128, 129])])
def test_a_last_batch_of_one_sample_joins_the_batch_before(n, sizes, class_balanced):
    """BatchNorm cannot normalise one sample in training: N mod B = 1 (dataset.limit_train=129 at batch 128) crashed
    every BatchNorm backbone at the end of epoch 1. Every sample is still served once per epoch."""
    bundle = build_data(
        "synthetic", num_classes=4, image_size=4, channels=1, train_per_class=n, test_per_class=1, limit_train=n
    )
    for mode in ("device", "dataloader"):
        train = build_loaders(bundle, 128, mode=mode, class_balanced=class_balanced)[0]
        set_epoch(train, 2)
        batches = [len(y) for _, y in train]
        assert batches == sizes and len(train) == len(sizes), (mode, batches)


def test_the_default_run_trains_on_a_train_set_of_129(tmp_path):
    from etf_train.training import train

    last = train(
        make_cfg("dataset.limit_train=129", "trainer.max_epochs=1", "trainer.progress=false", "trainer.device=cpu"),
        tmp_path,
    )
    assert math.isfinite(last["train/loss"])


def test_workers_on_the_device_path_are_said_to_have_no_effect(caplog):
    """loader.num_workers was dropped in silence where auto served the dataset from memory (four presets set 8)."""
    bundle = build_data("synthetic", num_classes=2, image_size=4, channels=1, train_per_class=4, test_per_class=2)
    with caplog.at_level("WARNING", logger="etf_train"):
        build_loaders(bundle, 4, num_workers=3)
    assert "loader.num_workers=3 has no effect: dataset synthetic is served from the device's memory" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="etf_train"):
        build_loaders(bundle, 4, num_workers=0)
        build_loaders(bundle, 4, num_workers=3, mode="dataloader")
    assert "has no effect" not in caplog.text
