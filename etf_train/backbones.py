"""Feature extractors keyed by config name, like timm's `create_model`.

Every module that `create_backbone` returns has an int `feature_dim` and maps a batch to
penultimate features: forward(x) -> (B, feature_dim), no classifier (the head owns that).
x is (B, C, H, W) float images, or (B,) long sample indices for the UFM backbone.
Each builder's keyword-only arguments are its options; configs/backbone/<name>.yaml
lists all of them with these defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from . import options as opt
from .errors import EtfTrainError
from .registry import Registry

__all__ = ["BACKBONES", "register_backbone", "create_backbone"]

# A builder is called as builder(in_shape, num_samples, **options) and returns an nn.Module with `feature_dim`.
BACKBONES = Registry("backbone")
register_backbone = BACKBONES.register


def create_backbone(
    name: str, /, *, in_shape: tuple[int, ...], num_samples: int | None = None, **options: Any
) -> nn.Module:
    """Build backbone `name` for inputs of per-sample shape `in_shape` ((C, H, W), or () for UFM indices).

    num_samples: train-set size, needed only by `ufm`. Unknown name or options -> EtfTrainError.
    """
    model = BACKBONES.build(name, tuple(int(s) for s in in_shape), num_samples, **options)
    assert isinstance(model.feature_dim, int), f"backbone {name} set no int feature_dim"
    return model


# ---------------------------------------------------------------------------------------- checks


def _check_not_indices(name: str, in_shape: tuple[int, ...]) -> None:
    if in_shape == ():
        raise EtfTrainError(f"backbone {name}: dataset ufm gives sample indices; use backbone=ufm")


def _image_channels(name: str, in_shape: tuple[int, ...]) -> int:
    """C of a (C, H, W) in_shape."""
    _check_not_indices(name, in_shape)
    if len(in_shape) != 3:
        raise EtfTrainError(f"backbone {name} needs images of shape (C, H, W), got per-sample shape {in_shape}")
    return in_shape[0]


def _with_feature_dim(model: nn.Module, feature_dim: int) -> nn.Module:
    model.feature_dim = int(feature_dim)
    return model


def _he_init(conv: nn.Conv2d) -> nn.Conv2d:
    """torchvision's ResNet/VGG conv init: He normal (fan_out), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _bias_option(net: nn.Module, bias: bool) -> nn.Module:
    """backbone.bias=false: conv and linear layers lose their bias, norms their affine scale and shift (as built
    with BatchNorm(affine=False), LayerNorm(elementwise_affine=False)), so every parameter is a weight matrix or
    kernel (optimizer=agd has no rule for 1-D parameters). The weights keep the values the builder gave them."""
    if opt.boolean("backbone.bias", bias):
        return net
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.bias = None
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.affine, m.weight, m.bias = False, None, None
        elif isinstance(m, nn.LayerNorm):
            m.elementwise_affine, m.weight, m.bias = False, None, None
    return net


def _fresh_conv(conv: nn.Conv2d, in_channels: int, **changes: Any) -> nn.Conv2d:
    """A new conv shaped like `conv` but with `in_channels` (and `changes`)."""
    spec = dict(
        in_channels=in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    return _he_init(nn.Conv2d(**{**spec, **changes}))


# ------------------------------------------------------------------------------------ torchvision


def _resnet(name: str, in_shape: tuple[int, ...], cifar_stem: bool, bias: bool) -> nn.Module:
    C = _image_channels(name, in_shape)
    opt.boolean("backbone.cifar_stem", cifar_stem)
    import torchvision  # imported by the builders that use it: UFM and small models start faster

    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        # 32 px inputs: the 7x7/2 conv and the max-pool would cut the map to 8x8 before layer1.
        net.conv1 = _fresh_conv(net.conv1, C, kernel_size=3, stride=1, padding=1)
        net.maxpool = nn.Identity()
    elif C != net.conv1.in_channels:
        net.conv1 = _fresh_conv(net.conv1, C)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return _with_feature_dim(_bias_option(net, bias), feature_dim)


@register_backbone("resnet18")
def _resnet18(
    in_shape: tuple[int, ...], num_samples: int | None, *, cifar_stem: bool = True, bias: bool = True
) -> nn.Module:
    """torchvision ResNet-18 -> 512 pooled features; cifar_stem=false keeps the ImageNet stem (224 px).

    bias=false: BatchNorm without affine parameters (the convs have no bias either way).
    """
    return _resnet("resnet18", in_shape, cifar_stem, bias)


@register_backbone("resnet50")
def _resnet50(
    in_shape: tuple[int, ...], num_samples: int | None, *, cifar_stem: bool = True, bias: bool = True
) -> nn.Module:
    """torchvision ResNet-50 -> 2048 pooled features; cifar_stem=false keeps the ImageNet stem (224 px).

    bias=false: BatchNorm without affine parameters (the convs have no bias either way).
    """
    return _resnet("resnet50", in_shape, cifar_stem, bias)


@register_backbone("vgg13")
def _vgg13(in_shape: tuple[int, ...], num_samples: int | None, *, bias: bool = True) -> nn.Module:
    """torchvision vgg13_bn convolutional features -> global average pool -> 512 features.

    Built from torchvision's VGG-13 layer list ("B") rather than vgg13_bn(), whose 120M-parameter
    classifier would be initialised only to be thrown away; the init is vgg13_bn's.
    bias=false: convs without bias, BatchNorm without affine parameters.
    """
    C = _image_channels("vgg13", in_shape)
    import torchvision

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["B"], batch_norm=True)
    features[0] = nn.Conv2d(C, features[0].out_channels, 3, padding=1)
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            _he_init(layer)
        elif isinstance(layer, nn.MaxPool2d):
            # Five 2x2/2 pools take 8x8 to 0x0 when flooring; ceil_mode keeps a 1x1 map (a pool on
            # 1x1 returns it unchanged) and equals flooring on the even sizes of 32 and 96 px data.
            layer.ceil_mode = True
    net = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    width = [m for m in features if isinstance(m, nn.BatchNorm2d)][-1].num_features
    return _with_feature_dim(_bias_option(net, bias), width)


# ------------------------------------------------------------------------------ small CPU models


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_backbone("small_cnn")
def _small_cnn(
    in_shape: tuple[int, ...], num_samples: int | None, *, width: int = 32, dim: int = 128, bias: bool = True
) -> nn.Module:
    """Three conv-BN-ReLU blocks (width, 2 width, 4 width; two ceil-mode pools), global pool, Linear -> dim.

    The global pool makes it size-agnostic (8x8 digits up to 96x96 STL-10).
    bias=false: BatchNorm without affine parameters, Linear without bias.
    """
    C = _image_channels("small_cnn", in_shape)
    width, dim = opt.integer("backbone.width", width), opt.integer("backbone.dim", dim)
    net = nn.Sequential(
        *_conv_bn_relu(C, width),
        *_conv_bn_relu(width, 2 * width),
        nn.MaxPool2d(2, ceil_mode=True),
        *_conv_bn_relu(2 * width, 4 * width),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, dim),
    )
    return _with_feature_dim(_bias_option(net, bias), dim)


@register_backbone("fast_cnn")
def _fast_cnn(
    in_shape: tuple[int, ...], num_samples: int | None, *, width: int = 24, dim: int = 128, bias: bool = True
) -> nn.Module:
    """Four conv-BN-ReLU blocks (width, 2, 4, 8 width), the last three with stride 2, global pool, Linear -> dim.

    small_cnn runs its first two convolutions at full resolution (about 40 M multiply-adds per 32-px image);
    here only the 3-channel stem does, and each halving of the map doubles the channels, so every later block
    costs the same (about 10 M in all at 32 px; docs/benchmarks.md measures the speed and accuracy).
    bias=false: BatchNorm without affine parameters, Linear without bias.
    """
    C = _image_channels("fast_cnn", in_shape)
    width, dim = opt.integer("backbone.width", width), opt.integer("backbone.dim", dim)
    blocks, c = [], C
    for i, mult in enumerate((1, 2, 4, 8)):
        blocks += _conv_bn_relu(c, mult * width, stride=1 if i == 0 else 2)
        c = mult * width
    net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, dim))
    return _with_feature_dim(_bias_option(net, bias), dim)


_NORMS: dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


@register_backbone("mlp")
def _mlp(
    in_shape: tuple[int, ...],
    num_samples: int | None,
    *,
    hidden: int = 256,
    depth: int = 2,
    dim: int = 128,
    norm: str = "batch",
    bias: bool = True,
) -> nn.Module:
    """Flatten, then `depth` x (Linear -> hidden, norm, ReLU), then Linear -> dim.  norm: batch | layer.

    bias=false: Linear without bias, norms without affine parameters.
    """
    _check_not_indices("mlp", in_shape)
    hidden, depth = opt.integer("backbone.hidden", hidden), opt.integer("backbone.depth", depth)
    dim = opt.integer("backbone.dim", dim)
    if norm not in _NORMS:
        raise EtfTrainError(f"backbone mlp: unknown norm {norm!r}; choose one of: {', '.join(_NORMS)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), _NORMS[norm](hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, dim))
    return _with_feature_dim(_bias_option(nn.Sequential(*layers), bias), dim)


# ------------------------------------------------------------------------------------------- timm


@register_backbone("timm")
def _timm(
    in_shape: tuple[int, ...],
    num_samples: int | None,
    *,
    model: str = "resnet18",
    pretrained: bool = False,
    kwargs: Mapping[str, Any] = MappingProxyType({}),
    bias: bool = True,
) -> nn.Module:
    """Any timm model, built with num_classes=0 so that it returns pooled pre-logits features.

    kwargs go to timm.create_model as they are (e.g. drop_path_rate, img_size).
    bias: only true; the key exists so that backbone.bias=false gets a clear refusal.
    """
    C = _image_channels("timm", in_shape)
    opt.boolean("backbone.pretrained", pretrained)
    if not opt.boolean("backbone.bias", bias):
        # timm's 1-D parameters (norm scales and shifts of many kinds, layer scales, ...) have no common switch.
        raise EtfTrainError(
            "backbone timm has no bias=false: its 1-D parameters differ from model to model; "
            "use backbone=resnet18, resnet50, vgg13, small_cnn, fast_cnn or mlp"
        )
    import timm

    source, _ = timm.models.parse_model_name(model)
    # "arch.tag" names one weight set, which must exist; hf-hub: / local-dir: names are resolved by timm itself.
    known = timm.is_model(model) and ("." not in model or timm.models.is_model_pretrained(model))
    if source is None and not known:
        stem = model.split("_")[0].split(".")[0]
        raise EtfTrainError(f"unknown timm model {model!r}; list the names with timm.list_models('*{stem}*')")
    if pretrained and source is None and not timm.models.is_model_pretrained(model):
        raise EtfTrainError(f"timm model {model!r} has no pretrained weights; set backbone.pretrained=false")
    kwargs = dict(kwargs)
    fixed = {"pretrained", "num_classes", "in_chans"} & kwargs.keys()
    if fixed:
        raise EtfTrainError(f"backbone timm: kwargs must not set {', '.join(sorted(fixed))} (etf-train sets them)")
    try:
        net = timm.create_model(model, pretrained=pretrained, num_classes=0, in_chans=C, **kwargs)
    except TypeError as e:
        raise EtfTrainError(f"timm model {model!r} rejected kwargs {kwargs}: {e}") from None
    except OSError as e:  # hub and URL downloads both fail as OSError subclasses
        raise EtfTrainError(
            f"could not download pretrained weights for timm model {model!r} ({type(e).__name__}; no network?); "
            "put them in the Hugging Face cache ($HF_HOME) first or set backbone.pretrained=false"
        ) from None
    # Pre-logits width: differs from num_features where a head conv follows the pool (e.g. MobileNetV3).
    return _with_feature_dim(net, getattr(net, "head_hidden_size", None) or net.num_features)


# -------------------------------------------------------------------------------------------- UFM


@register_backbone("ufm")
def _ufm(in_shape: tuple[int, ...], num_samples: int | None, *, dim: int = 512, init_std: float = 1.0) -> nn.Module:
    """Unconstrained features model: one free `dim`-vector per train sample, x = long indices (B,) -> (B, dim).

    optimizer=agd re-initialises the table (training/agd.py), so init_std then has no effect.
    """
    if in_shape != ():
        raise EtfTrainError(
            f"backbone ufm needs dataset=ufm (sample indices), got images of shape {in_shape}; "
            "use an image backbone such as backbone=resnet18"
        )
    if num_samples is None:
        raise EtfTrainError("backbone ufm needs num_samples (the train-set size), got none")
    num_samples, dim = opt.integer("num_samples", num_samples), opt.integer("backbone.dim", dim)
    init_std = opt.number("backbone.init_std", init_std, above=0)
    net = nn.Embedding(num_samples, dim)
    nn.init.normal_(net.weight, std=init_std)
    return _with_feature_dim(net, dim)
