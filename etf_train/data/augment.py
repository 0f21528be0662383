"""The one augmentation spec shared by both loader paths: per-sample torchvision transforms (DataLoader) and
the equivalent batched ops on the training device (DeviceLoader)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


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
        from torchvision import (
            transforms as T,  # only the DataLoader path needs torchvision
        )

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
            stats = (
                torch.tensor(self.mean, device=device)[:, None, None],
                torch.tensor(self.std, device=device)[:, None, None],
            )

        def transform(x: Tensor, generator: torch.Generator) -> Tensor:
            if self.padding or self.flip:
                x = random_crop_flip(x, self.padding, self.flip, generator)
            return x if stats is None else normalise(x, *stats)

        return transform


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
