"""Label noise on the train split (dataset.label_noise), and how much of it the model has fitted.

The noisy labels are a function of (clean labels, p, split_seed): a resumed run recomputes the same ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import EtfTrainError


def flip_labels(targets: Tensor, p: float, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded fraction p of the labels replaced by a uniformly drawn different label:

        n = round(p N) positions drawn without replacement;  y -> (y + u) mod K,  u ~ U{1, ..., K-1},

    so the new label is uniform over the K-1 others and never y. Returns (labels (N,) long, noisy (N,) bool)."""
    if num_classes < 2:
        raise EtfTrainError(f"dataset.label_noise={p:g} needs at least 2 classes to flip labels between")
    g = torch.Generator().manual_seed(seed)
    flipped = torch.randperm(len(targets), generator=g)[: round(p * len(targets))]  # (n,)
    shift = torch.randint(1, num_classes, (len(flipped),), generator=g)  # (n,)
    labels = targets.clone()
    labels[flipped] = (targets[flipped] + shift) % num_classes
    noisy = torch.zeros(len(targets), dtype=torch.bool)
    noisy[flipped] = True
    return labels, noisy


def noisy_fit(pred: Tensor, labels: Tensor, noisy: Tensor) -> tuple[Tensor, Tensor]:
    """(noisy samples predicted as their noisy label, noisy samples) as 0-dim long tensors on pred's device (no host
    sync: sum them over batches and ranks, then train/noisy_fit = first / second).
    pred, labels (the train labels, noise included), noisy: (n,), the same samples in order."""
    noisy = noisy.to(pred.device)
    return ((pred == labels.to(pred.device)) & noisy).sum(), noisy.sum()
