"""`etf-train dataset=<real dataset>` trains the model and budget fit for it (issue 31): each real dataset chooses
its backbone and its epochs and batch, which the command line overrides; the toy datasets keep the quick defaults."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from etf_train.backbones import create_backbone

from .conftest import make_cfg

# dataset: (backbone, K, per-sample shape, epochs, batch, CIFAR stem), written out from the yaml comments' sources
REAL = {
    "cifar10": ("resnet18", 10, (3, 32, 32), 200, 256, True),
    "cifar100": ("resnet18", 100, (3, 32, 32), 200, 256, True),
    "stl10": ("resnet18", 10, (3, 96, 96), 200, 256, True),
    "mnist": ("resnet18", 10, (1, 28, 28), 350, 128, True),
    "fashion_mnist": ("resnet18", 10, (1, 28, 28), 350, 128, True),
    "imagenet": ("resnet50", 1000, (3, 224, 224), 90, 256, False),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_a_real_dataset_brings_its_model_and_budget(name):
    backbone, K, shape, epochs, batch, stem = REAL[name]
    cfg = make_cfg(f"dataset={name}", "head=nearest_etf")
    assert (cfg.backbone.name, cfg.trainer.max_epochs, cfg.trainer.batch_size) == (backbone, epochs, batch)
    options = OmegaConf.to_container(cfg.backbone, resolve=True)
    assert options.pop("name") == backbone and options["cifar_stem"] is stem
    model = create_backbone(backbone, in_shape=shape, **options)
    assert model.feature_dim >= K - 1  # room for the simplex ETF of nearest_etf


def test_the_command_line_overrides_what_the_dataset_chooses():
    cfg = make_cfg("dataset=cifar100", "backbone=fast_cnn", "trainer.max_epochs=3", "trainer.batch_size=64")
    assert (cfg.backbone.name, cfg.trainer.max_epochs, cfg.trainer.batch_size) == ("fast_cnn", 3, 64)
    preset = make_cfg("experiment=cifar100_resnet18")  # a preset's recipe still applies over the dataset's
    assert (preset.backbone.name, preset.trainer.max_epochs, preset.loader.class_balanced) == ("resnet18", 200, True)


@pytest.mark.parametrize(("size", "stem"), [(32, True), (96, True), (128, False), (224, False)])
def test_an_image_folder_gets_the_resnet_stem_of_its_image_size(size, stem):
    cfg = make_cfg("dataset=image_folder", f"dataset.image_size={size}")
    assert cfg.backbone.name == "resnet18" and cfg.backbone.cifar_stem is stem
    assert (cfg.trainer.max_epochs, cfg.trainer.batch_size) == (10, 128)  # its size is unknown: the quick budget


@pytest.mark.parametrize("overrides", [[], ["dataset=synthetic"], ["dataset=ufm", "backbone=ufm"]])
def test_the_toy_datasets_keep_the_quick_defaults(overrides):
    cfg = make_cfg(*overrides)
    expected = "ufm" if overrides[-1:] == ["backbone=ufm"] else "fast_cnn"
    assert (cfg.backbone.name, cfg.trainer.max_epochs, cfg.trainer.batch_size) == (expected, 10, 128)
