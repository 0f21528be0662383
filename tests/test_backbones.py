"""Backbones: feature shapes on the smallest inputs, gradients, the real torchvision/timm paths, configs, errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from etf_train.backbones import BACKBONES, create_backbone, register_backbone
from etf_train.errors import EtfTrainError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DIGITS, CIFAR = (1, 8, 8), (3, 32, 32)  # the smallest inputs every image backbone must take
IMAGE_DIMS = {"resnet18": 512, "resnet50": 2048, "vgg13": 512, "small_cnn": 128, "fast_cnn": 128, "mlp": 128}


def _features_and_grads(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward x, backprop a random linear functional of the features: every parameter is reached by the backward
    pass (catches a layer left out of forward), and every weight matrix or kernel gets a non-zero gradient.

    Vectors (biases, norm scales) may have a gradient that is mathematically zero, e.g. a BatchNorm shift that a
    later normalisation removes; whether it then comes out as 0.0 or a round-off crumb depends on the CPU and the
    thread count, so only their presence is checked.
    """
    f = model(x)
    (f * torch.randn_like(f)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        if p.dim() >= 2:
            assert p.grad.abs().sum() > 0, f"zero gradient for the weights {name}"
    return f


def _hooked_output(module: nn.Module, run) -> torch.Tensor:
    """The output of `module` during run()."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def _one_line_error(match: str, name: str, **kwargs) -> str:
    with pytest.raises(EtfTrainError, match=match) as info:
        create_backbone(name, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------ image backbones


@pytest.mark.parametrize("in_shape", [DIGITS, CIFAR], ids=["8px-1ch", "32px-3ch"])
@pytest.mark.parametrize("arch", sorted(IMAGE_DIMS))
def test_image_backbone_gives_features_and_gradients(arch, in_shape):
    torch.manual_seed(0)
    model = create_backbone(arch, in_shape=in_shape)
    assert model.feature_dim == IMAGE_DIMS[arch]
    f = _features_and_grads(model, torch.randn(2, *in_shape))
    assert f.shape == (2, model.feature_dim) and f.dtype == torch.float32
    assert torch.isfinite(f).all()


def test_resnet_features_are_the_pooled_penultimate_layer():
    torch.manual_seed(0)
    model = create_backbone("resnet18", in_shape=(1, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8)
    pooled = _hooked_output(model.avgpool, lambda: model(x))
    torch.testing.assert_close(model(x), pooled.flatten(1))
    assert isinstance(model.fc, nn.Identity)


def test_resnet_stems():
    x = torch.randn(1, 3, 32, 32)
    cifar = create_backbone("resnet18", in_shape=CIFAR).eval()
    imagenet = create_backbone("resnet18", in_shape=CIFAR, cifar_stem=False).eval()
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and cifar.conv1.bias is None
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    # layer1 sees the full 32x32 map with the CIFAR stem, 8x8 after the ImageNet conv1 + max-pool.
    assert _hooked_output(cifar.layer1, lambda: cifar(x)).shape[-2:] == (32, 32)
    assert _hooked_output(imagenet.layer1, lambda: imagenet(x)).shape[-2:] == (8, 8)
    gray = create_backbone("resnet18", in_shape=(1, 32, 32), cifar_stem=False).eval()
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (7, 7)
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 512)


def test_vgg13_is_vgg13_bn_with_global_average_pool():
    torch.manual_seed(0)
    model = create_backbone("vgg13", in_shape=DIGITS).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10 and convs[0].in_channels == 1  # VGG-13: 10 conv layers
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 10
    for size in (8, 40):
        x = torch.randn(1, 1, size, size)
        conv_map = _hooked_output(model[0], lambda: model(x))
        assert conv_map.shape[-2:] == ((size + 31) // 32,) * 2  # five ceil-mode halvings: 8 -> 1, 40 -> 2
        torch.testing.assert_close(model(x), conv_map.mean(dim=(-2, -1)))


def test_small_cnn_options_and_stl_sized_input():
    model = create_backbone("small_cnn", in_shape=(3, 96, 96), width=8, dim=20)
    assert model.feature_dim == 20
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 20)
    assert max(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) == 32  # 4 x width


def test_fast_cnn_halves_the_map_three_times_and_doubles_the_channels():
    """Catches a stride or width left out (the speed of fast_cnn is its three stride-2 blocks; docs/benchmarks.md)."""
    model = create_backbone("fast_cnn", in_shape=CIFAR, width=8, dim=20)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in convs] == [
        (3, 8, 1),
        (8, 16, 2),
        (16, 32, 2),
        (32, 64, 2),
    ]
    last = _hooked_output(convs[-1], lambda: model(torch.randn(2, *CIFAR)))
    assert last.shape == (2, 64, 4, 4) and model.feature_dim == 20
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 20)  # 8 px: 8 -> 4 -> 2 -> 1


def test_mlp_layers_and_layer_norm():
    model = create_backbone("mlp", in_shape=(2, 3, 4), hidden=16, depth=3, dim=5, norm="layer")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(24, 16), (16, 16), (16, 16), (16, 5)]
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 3
    # LayerNorm normalises per sample, so a batch of one works and its features do not depend on the batch.
    x = torch.randn(3, 2, 3, 4)
    torch.testing.assert_close(model(x[:1]), model(x)[:1])
    _features_and_grads(model, x)


# ---------------------------------------------------------------------------- bias=false (optimizer=agd)

BIAS_CASES = [(arch, {}) for arch in sorted(IMAGE_DIMS)] + [("mlp", {"norm": "layer"})]
BIAS_IDS = [*sorted(IMAGE_DIMS), "mlp-layer_norm"]


def _built_twice(arch: str, options: dict, **more) -> tuple[nn.Module, nn.Module]:
    """The default model and one with `more` options, from the same seed."""
    torch.manual_seed(0)
    default = create_backbone(arch, in_shape=DIGITS, **options)
    torch.manual_seed(0)
    return default, create_backbone(arch, in_shape=DIGITS, **options, **more)


@pytest.mark.parametrize("arch, options", BIAS_CASES, ids=BIAS_IDS)
def test_bias_false_leaves_exactly_the_default_weights(arch, options):
    """Catches a bias or norm scale/shift left behind (optimizer=agd would refuse the model), or weights that change
    with the switch."""
    default, stripped = _built_twice(arch, options, bias=False)
    weights = {name: p for name, p in default.named_parameters() if p.dim() >= 2}
    # Exactly the default's weight matrices and kernels: no parameter with dim < 2, which is what AGD checks.
    assert dict(stripped.named_parameters()).keys() == weights.keys()
    assert all(torch.equal(p, weights[name]) for name, p in stripped.named_parameters())
    assert torch.isfinite(_features_and_grads(stripped, torch.randn(2, *DIGITS))).all()


@pytest.mark.parametrize("arch, options", BIAS_CASES, ids=BIAS_IDS)
def test_bias_defaults_to_true_and_keeps_every_parameter(arch, options):
    """Catches the default switched off: every norm keeps its scale and shift, every linear layer its bias."""
    default, explicit = _built_twice(arch, options, bias=True)
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in default.state_dict().items())
    for m in default.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            assert m.weight is not None and m.bias is not None
        if isinstance(m, nn.Linear):
            assert m.bias is not None


# -------------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize(
    "name, in_shape, kwargs",
    [
        ("test_efficientnet", DIGITS, {}),
        ("test_vit", CIFAR, {"img_size": 32}),  # ViT needs its image size
        ("mobilenetv3_small_050", CIFAR, {}),
    ],
)
def test_timm_backbone_matches_timm_pre_logits(name, in_shape, kwargs):
    torch.manual_seed(0)
    model = create_backbone("timm", in_shape=in_shape, model=name, kwargs=kwargs)
    reference = timm.create_model(name, num_classes=0, in_chans=in_shape[0], **kwargs)
    # timm's pre-logits width; num_features would be wrong for mobilenetv3 (288, its conv head gives 1024).
    assert model.feature_dim == reference.head_hidden_size
    x = torch.randn(2, *in_shape)
    f = _features_and_grads(model, x)
    assert f.shape == (2, model.feature_dim)
    model.eval()
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), expected)


def test_timm_pretrained_download_failure_is_one_line(monkeypatch, tmp_path):
    # Offline with an empty cache: fails at once, the way a machine without network does after retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _one_line_error("could not download pretrained weights", "timm", in_shape=CIFAR, model="resnet10t", pretrained=True)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"model": "resnet_nope"}, r"unknown timm model 'resnet_nope'.*timm\.list_models\('\*resnet\*'\)"),
        ({"model": "resnet18.no_such_tag"}, r"unknown timm model 'resnet18\.no_such_tag'"),
        ({"model": "convnext_atto_rms", "pretrained": True}, "convnext_atto_rms' has no pretrained weights"),
        ({"model": "test_resnet", "kwargs": {"bogus": 1}}, "rejected kwargs"),
        ({"model": "test_resnet", "kwargs": {"in_chans": 3}}, "must not set in_chans"),
        ({"model": "test_resnet", "pretrained": "yes"}, "pretrained must be true or false"),
        ({"model": "test_resnet", "bias": False}, "backbone timm has no bias=false: .* use backbone=resnet18"),
    ],
)
def test_timm_errors(options, match):
    if options.get("pretrained") is True and timm.models.is_model_pretrained(options["model"]):
        pytest.skip(f"this timm version ships pretrained weights for {options['model']}")
    _one_line_error(match, "timm", in_shape=CIFAR, **options)


# --------------------------------------------------------------------------------------------- UFM


def test_ufm_gives_one_free_vector_per_sample():
    torch.manual_seed(0)
    model = create_backbone("ufm", in_shape=(), num_samples=10, dim=16, init_std=0.5)
    idx = torch.tensor([3, 7, 3])
    f = model(idx)
    assert model.feature_dim == 16 and f.shape == (3, 16)
    torch.testing.assert_close(f, model.weight[idx])
    (f * torch.randn_like(f)).sum().backward()
    touched = model.weight.grad.abs().sum(dim=1) > 0
    assert touched.tolist() == [i in (3, 7) for i in range(10)]


def test_ufm_init_std():
    torch.manual_seed(0)
    weight = create_backbone("ufm", in_shape=(), num_samples=2000, dim=64, init_std=2.0).weight
    assert weight.shape == (2000, 64)
    assert abs(weight.std().item() - 2.0) < 0.02 and abs(weight.mean().item()) < 0.02


# ----------------------------------------------------------------------------------------- configs


def _yaml_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml"))


def test_every_registered_backbone_has_a_config():
    assert _yaml_names() == sorted(BACKBONES)


@pytest.mark.parametrize("config_name", _yaml_names())
def test_config_composes_lists_every_default_and_builds(config_name):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(overrides=[f"+backbone={config_name}"])
    options = OmegaConf.to_container(cfg.backbone, resolve=True)
    arch = options.pop("name")
    assert arch == config_name
    defaults = {
        p.name: p.default for p in inspect.signature(BACKBONES[arch]).parameters.values() if p.kind is p.KEYWORD_ONLY
    }
    assert options == defaults
    in_shape, num_samples = ((), 4) if arch == "ufm" else (DIGITS, None)
    model = create_backbone(arch, in_shape=in_shape, num_samples=num_samples, **options)
    x = torch.arange(2) if arch == "ufm" else torch.randn(2, *in_shape)
    assert model(x).shape == (2, model.feature_dim)


# ------------------------------------------------------------------------------------------ errors


def test_unknown_arch_lists_the_choices():
    message = _one_line_error("unknown backbone 'resnet19'", "resnet19", in_shape=CIFAR)
    assert all(name in message for name in BACKBONES)


def test_unknown_option_names_the_options():
    message = _one_line_error(
        r"backbone small_cnn: unknown option\(s\) widht; its options are", "small_cnn", in_shape=CIFAR, widht=8
    )
    assert "width, dim" in message


@pytest.mark.parametrize("arch", sorted(set(BACKBONES) - {"ufm"}))
def test_image_backbone_on_ufm_indices(arch):
    _one_line_error("dataset ufm gives sample indices; use backbone=ufm", arch, in_shape=())


def test_ufm_on_images():
    _one_line_error("backbone ufm needs dataset=ufm", "ufm", in_shape=CIFAR, num_samples=10)


def test_ufm_without_num_samples():
    _one_line_error("ufm needs num_samples", "ufm", in_shape=())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "resnet18", "in_shape": (3, 32)}, r"needs images of shape \(C, H, W\)"),
        ({"name": "resnet18", "in_shape": CIFAR, "cifar_stem": "no"}, "cifar_stem must be true or false"),
        ({"name": "small_cnn", "in_shape": CIFAR, "width": 0}, "width must be a positive integer"),
        ({"name": "vgg13", "in_shape": CIFAR, "bias": "no"}, "bias must be true or false"),
        ({"name": "mlp", "in_shape": CIFAR, "depth": 1.5}, "depth must be a positive integer"),
        ({"name": "mlp", "in_shape": CIFAR, "norm": "group"}, "unknown norm 'group'"),
        ({"name": "ufm", "in_shape": (), "num_samples": 4, "init_std": 0}, "init_std must be a finite number > 0"),
    ],
)
def test_bad_option_values(kwargs, match):
    _one_line_error(match, **kwargs)


def test_register_backbone_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("mlp")(lambda in_shape, num_samples: nn.Identity())
