"""Mixing a training batch with its roll by one (mixup, cutmix), in the same form on both loader paths.

    mix = build_mix(name, num_classes=K, alpha=alpha, prob=prob)   # configs/mix/<name>.yaml
    x, target = mix(x, y, generator)                    # device path: x (B, C, H, W), y (B,) -> soft target (B, K)
    DataLoader(..., collate_fn=mix.collate)             # DataLoader path: torchvision's v2 MixUp / CutMix

As torchvision's MixUp and CutMix do, one draw serves the whole batch: with probability `prob` the batch is mixed,
sample b with sample b-1 (the batch rolled by one), lam ~ Beta(alpha, alpha), and

    target = lam one_hot(y) + (1 - lam) one_hot(roll(y))     (lam: the weight the own image keeps)

otherwise target = one_hot(y). mix=none leaves the batch and its hard labels as they are. The device path draws
from the loader's generator (seeded by seed, rank, epoch); the DataLoader path from torch's global RNG in the
main process, or from each worker's RNG, which the loader seeds per epoch: both are reproducible and resumable.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

from .. import options as opt
from ..registry import Registry

MIXES = Registry("mix")
register_mix = MIXES.register


@register_mix("none")
class NoMix:
    """The batch and its hard labels unchanged."""

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return x, y

    def collate(self, samples: list) -> tuple[Tensor, Tensor]:
        return default_collate(samples)


NO_MIX = NoMix()


class Mix:
    """A batch mixed with its roll by one, with probability prob; subclasses give `pair` and torchvision's transform."""

    torchvision: str  # the name of torchvision.transforms.v2's transform, imported when the DataLoader path needs it

    def __init__(self, num_classes: int, alpha: float = 1.0, prob: float = 1.0):
        self.alpha = opt.number("mix.alpha", alpha, above=0)
        self.prob = opt.number("mix.prob", prob, 0.0, maximum=1.0)
        self.num_classes = num_classes

    @functools.cached_property
    def transform(self):
        from torchvision.transforms import v2

        return getattr(v2, self.torchvision)(alpha=self.alpha, num_classes=self.num_classes)

    def pair(self, x: Tensor, lam: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x mixed with x.roll(1, 0) for the drawn lam, the weight lam the own image actually keeps)."""
        raise NotImplementedError

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Device path, batched, no host sync: the draws in torchvision's order (coin, lam, box) from `generator`."""
        mixed = torch.rand((), generator=generator, device=x.device) < self.prob  # one coin per batch
        # Beta(alpha, alpha) as torch.distributions.Beta samples it (a 2-class Dirichlet), but from our generator;
        # lam in float64 like torchvision's Python float, so the same draws give the same bits
        concentration = torch.full((2,), self.alpha, device=x.device)
        lam = torch._sample_dirichlet(concentration, generator=generator)[0].double()
        x_mixed, lam = self.pair(x, lam, generator)
        lam = torch.where(mixed, lam, 1.0)
        Y = F.one_hot(y, self.num_classes).float()  # (B, K)
        return torch.where(mixed, x_mixed, x), Y.roll(1, 0) * (1 - lam) + Y * lam

    def collate(self, samples: list) -> tuple[Tensor, Tensor]:
        """DataLoader path: collate, then torchvision's own transform on the batch with probability prob
        (coin and transform draw from torch's RNG, seeded per batch by TrainDataLoader)."""
        x, y = default_collate(samples)
        if torch.rand(()) < self.prob:
            return self.transform(x, y)
        return x, F.one_hot(y, self.num_classes).float()


@register_mix("mixup")
class MixUp(Mix):
    """mixup (Zhang et al. 2018): x_b' = lam x_b + (1 - lam) x_{b-1}."""

    torchvision = "MixUp"

    def pair(self, x, lam, generator):
        return x.roll(1, 0) * (1 - lam) + x * lam, lam


@register_mix("cutmix")
class CutMix(Mix):
    """CutMix (Yun et al. 2019): a box of x_{b-1} pasted into x_b. Box centre (r_x, r_y) uniform over the pixels,
    half sides floor(r W), floor(r H) with r = sqrt(1 - lam) / 2, clipped to the image; the label weight is then
    lam = 1 - box area / (H W), torchvision's correction for the clipping."""

    torchvision = "CutMix"

    def pair(self, x, lam, generator):
        H, W = x.shape[-2:]
        r_x = torch.randint(W, (1,), generator=generator, device=x.device)
        r_y = torch.randint(H, (1,), generator=generator, device=x.device)
        r = 0.5 * (1 - lam).sqrt()
        half_w, half_h = (r * W).long(), (r * H).long()  # int(): r >= 0, so floor
        x1, x2 = (r_x - half_w).clamp_min(0), (r_x + half_w).clamp_max(W)
        y1, y2 = (r_y - half_h).clamp_min(0), (r_y + half_h).clamp_max(H)
        rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
        box = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))  # (H, W)
        return torch.where(box, x.roll(1, 0), x), (1 - ((x2 - x1) * (y2 - y1)).double() / (H * W)).squeeze(0)


def build_mix(name: str, *, num_classes: int, **options) -> NoMix | Mix:
    """The mix `name` (none | mixup | cutmix) for batches of a K-class dataset; options: its yaml's keys (alpha and
    prob: Beta(alpha, alpha) and the probability that a batch is mixed; none has none)."""
    extra = {} if MIXES.get(name) is NoMix else {"num_classes": num_classes}  # the class count is not an option
    return MIXES.build(name, **extra, **options)


__all__ = ["MIXES", "NO_MIX", "CutMix", "Mix", "MixUp", "NoMix", "build_mix", "register_mix"]
