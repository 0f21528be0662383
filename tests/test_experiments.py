"""configs/experiment/: every file composes to the paper's settings, the offline ones train a tiny epoch, and the
others build their model and refuse their missing data in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from etf_train.cli import config_dir
from etf_train.errors import EtfTrainError
from etf_train.rundir import read_scalars
from etf_train.training import build_model, train

from .conftest import make_cfg

# name: (dataset, backbone arch, K, feature dim d, input shape, learning rate)
EXPERIMENTS = {
    "ufm10": ("ufm", "ufm", 10, 512, (), 5.0),
    "ufm100": ("ufm", "ufm", 100, 512, (), 5.0),
    "ufm1000": ("ufm", "ufm", 1000, 1024, (), 5.0),
    "ufm10_authors": ("ufm", "ufm", 10, 512, (), None),  # AGD, gain 10: no learning rate
    "ufm100_authors": ("ufm", "ufm", 100, 512, (), None),
    "cifar10_resnet18": ("cifar10", "resnet18", 10, 512, (3, 32, 32), 0.05),
    "cifar100_resnet18": ("cifar100", "resnet18", 100, 512, (3, 32, 32), 0.05),
    "cifar10_vgg13": ("cifar10", "vgg13", 10, 512, (3, 32, 32), 0.05),
    "stl10_resnet18": ("stl10", "resnet18", 10, 512, (3, 96, 96), 0.05),
    "imagenet_resnet50": ("imagenet", "resnet50", 1000, 2048, (3, 224, 224), 0.05),
    "cifar10_jpg_resnet18": ("image_folder", "resnet18", 10, 512, (3, 32, 32), 0.05),
    "paper_recipe": ("digits", "fast_cnn", 10, 128, (1, 8, 8), 0.05),  # the shared recipe on the defaults
}
IMAGE_EXPERIMENTS = [n for n, e in EXPERIMENTS.items() if e[1] != "ufm" and n != "paper_recipe"]
QUICK = ["trainer.max_epochs=1", "trainer.progress=false", "loader.num_workers=0"]


def test_every_experiment_file_is_listed_here():
    assert sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")) == sorted(EXPERIMENTS)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
@pytest.mark.parametrize("head", ["learned", "fixed_etf", "nearest_etf"])
def test_experiment_composes_to_the_paper_recipe(name, head):
    dataset, arch, K, d, _, lr = EXPERIMENTS[name]
    cfg = make_cfg(f"experiment={name}", f"head={head}")
    assert (cfg.dataset.name, cfg.backbone.name, cfg.head.name) == (dataset, arch, head)
    # the authors' presets batch each head as their scripts do (tests/test_stratified_folds.py); the others stratify
    balanced, folds = (False, head == "nearest_etf") if name.endswith("_authors") else (True, False)
    assert (cfg.trainer.max_epochs, cfg.trainer.batch_size) == (200, 256)
    assert (cfg.loader.class_balanced, cfg.loader.stratified_folds) == (balanced, folds)
    assert cfg.head.tau == 5.0
    o = cfg.optimizer
    if lr is None:  # the authors' own setting: AGD at gain 10, no learning-rate schedule
        assert (o._target_, o.gain, o.depth, cfg.scheduler._target_) == ("etf_train.training.agd.AGD", 10.0, None, None)
    else:
        assert (o._target_, o.lr, o.momentum, o.weight_decay) == ("torch.optim.SGD", lr, 0.9, 5e-4)
        assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.CosineAnnealingLR"
    if arch == "ufm":
        assert (cfg.dataset.num_classes, cfg.backbone.dim, cfg.dataset.per_class) == (K, d, 100)


def test_experiment_settings_beat_the_primary_config_and_lose_to_the_command_line():
    assert make_cfg("experiment=imagenet_resnet50").metrics.every_n_epochs == 5
    assert make_cfg("experiment=imagenet_resnet50", "metrics.every_n_epochs=2").metrics.every_n_epochs == 2
    cfg = make_cfg("experiment=cifar10_resnet18", "dataset=cifar100", "trainer.max_epochs=3")
    assert (cfg.dataset.name, cfg.trainer.max_epochs, cfg.loader.class_balanced) == ("cifar100", 3, True)


def test_cifar10_jpg_root_comes_from_the_environment(monkeypatch):
    cfg = make_cfg("experiment=cifar10_jpg_resnet18")
    monkeypatch.delenv("CIFAR10_JPG", raising=False)
    assert cfg.dataset.root == "data/cifar10-jpg"
    monkeypatch.setenv("CIFAR10_JPG", "/somewhere/cifar10-jpg")
    assert cfg.dataset.root == "/somewhere/cifar10-jpg"
    assert (cfg.dataset.image_size, list(cfg.dataset.mean)) == (32, [0.489, 0.481, 0.447])


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("ufm10", ["dataset.per_class=8", "trainer.batch_size=32"]),
        ("ufm100", ["dataset.per_class=2", "trainer.batch_size=100"]),
        pytest.param("ufm1000", ["dataset.per_class=1", "trainer.batch_size=500"], marks=pytest.mark.slow),
    ],
)
def test_ufm_experiment_trains_one_epoch(name, sizes, tmp_path):
    _, _, K, d, _, _ = EXPERIMENTS[name]
    cfg = make_cfg(f"experiment={name}", *QUICK, *sizes)
    scalars = train(cfg, tmp_path)
    assert {"train/acc", "test/acc", "nc/nc1", "solver/ms"} <= set(scalars)
    assert read_scalars(tmp_path)["train/acc"][0].tolist() == [1]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    features = next(v for k, v in state["model"].items() if k.startswith("backbone") and v.ndim == 2)
    assert features.shape == (K * int(sizes[0].split("=")[1]), d)  # one free d-vector per training sample


def _image_folder(root: Path, classes: int, per_split: dict[str, int]) -> None:
    """Tiny CIFAR-like folders: 32x32 RGB images, JPEG and PNG mixed, a class-dependent mean colour."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(40 + 60 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.{'jpg' if i % 2 else 'png'}")


def test_cifar10_jpg_experiment_trains_one_epoch_from_CIFAR10_JPG(tmp_path):
    """Through the real command, so CIFAR10_JPG is read where users set it."""
    data = tmp_path / "cifar10-jpg"
    _image_folder(data, classes=3, per_split={"train": 4, "test": 2})
    run = tmp_path / "run"
    exe = Path(sys.executable).with_name("etf-train")
    env = {**os.environ, "CIFAR10_JPG": str(data), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [str(exe), "experiment=cifar10_jpg_resnet18", *QUICK, "trainer.batch_size=6", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr  # (the default root, data/cifar10-jpg, does not exist here)
    assert read_scalars(run)["train/acc"][0].tolist() == [1]
    acc = read_scalars(run)["test/acc"][1][0]
    assert np.isclose(acc * 6 / 100, round(acc * 6 / 100))  # a whole number of the 6 test images


@pytest.mark.parametrize("name", [n for n in IMAGE_EXPERIMENTS if n != "cifar10_jpg_resnet18"])
def test_image_experiment_builds_its_model_and_refuses_missing_data(name, tmp_path):
    _, _, K, d, in_shape, _ = EXPERIMENTS[name]
    cfg = make_cfg(f"experiment={name}")
    model = build_model(cfg, K, in_shape, num_samples=2)
    assert model.head.dim == d
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, *in_shape)).shape == (2, K)

    offline = [f"dataset.root={tmp_path}"] + (["dataset.download=false"] if "download" in cfg.dataset else [])
    with pytest.raises(EtfTrainError, match=f"^dataset {cfg.dataset.name}: .*{tmp_path}") as err:
        train(make_cfg(f"experiment={name}", *QUICK, *offline), tmp_path / "run")
    assert "\n" not in str(err.value)
