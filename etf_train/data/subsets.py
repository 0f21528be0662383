"""Seeded choices of which samples a run sees: the long-tailed profile and stratified subsets.

Every choice uses `split_seed`, not the training seed, so runs with different seeds see the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import EtfTrainError


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


def take(targets: Tensor, per_class: Sequence[int], seed: int) -> Tensor:
    """Sorted positions of a seeded random choice of per_class[c] samples of each class c."""
    g = torch.Generator().manual_seed(seed)
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
        raise EtfTrainError(
            f"{what}={n}: a stratified subset that small cannot hold all {present} classes; use >= {present}"
        )
    return take(targets, stratified_counts(counts, n), seed)
