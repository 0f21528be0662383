"""What every head is: the shared feature normalisation h = tau f / ||f|| (switchable off), so comparisons between
heads are fair, the trainer-facing interface (``forward(f, y)``, ``normalize``, ``classify``, ``weight``, ``bias``,
``after_step``, ``pop_solver_stats``), what a head declares about itself, and the registry that builds heads by
their config name."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .. import options as opt
from ..errors import EtfTrainError
from ..etf import canonical_stiefel, random_stiefel
from ..registry import Registry
from ..sphere import sphere

HEADS = Registry("head")
register_head = HEADS.register


class Head(nn.Module):
    """Shared feature normalisation and the trainer-facing interface."""

    # What a head is, declared, for the code that must know (losses, warnings) instead of testing its name:
    fixed_geometry = False  # its classifier is a simplex ETF it does not learn by gradient (dot regression needs one)
    batch_centred = False  # it centres each training batch by the batch's own mean (a tiny last batch nearly cancels)

    def __init__(self, num_classes: int, dim: int, tau: float, normalize: bool):
        super().__init__()
        if num_classes < 2:
            raise EtfTrainError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.num_classes, self.dim = num_classes, dim
        self.tau = opt.number("head.tau", tau, above=0)
        self.normalize_features = opt.boolean("head.normalize", normalize)

    def normalize(self, f: torch.Tensor) -> torch.Tensor:
        """h = tau f / ||f|| (the sphere of radius tau; tau acts as the logit scale).  (B, d) -> (B, d)"""
        return sphere(f, self.tau) if self.normalize_features else f

    def classify(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of normalised features h (B, d) -> (B, K); y (training only) for heads that fit to the labels."""
        raise NotImplementedError

    def forward(self, f: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.normalize(f), y)

    @property
    def weight(self) -> torch.Tensor:
        """The current classifier, (K, d)."""
        raise NotImplementedError

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias of the eval-mode logits h W^T + b, (K,); None without one (or one that depends on the batch)."""
        return None

    def after_step(self) -> None:
        """Called by the trainer after each optimiser step."""

    def pop_solver_stats(self) -> dict[str, float]:
        """Solver statistics gathered since the last call (only the nearest-ETF head has any)."""
        return {}


def reference_point(dim: int, num_classes: int, basis: str, seed: int) -> torch.Tensor:
    basis = opt.choice("head.basis", basis, ("identity", "random"))
    seed = opt.integer("head.seed", seed, 0)
    if basis == "identity":
        if seed != 0:  # a head.seed sweep would otherwise give identical heads, pooled as replicates
            raise EtfTrainError(
                f"head.seed={seed} applies to head.basis=random only (the identity basis has no draw); "
                "set head.basis=random, or sweep the run's seed=..."
            )
        return canonical_stiefel(dim, num_classes)
    return random_stiefel(dim, num_classes, generator=torch.Generator().manual_seed(seed))


def check_etf_dims(name: str, num_classes: int, dim: int) -> None:
    if dim < num_classes:
        raise EtfTrainError(
            f"head={name} needs feature dimension d >= number of classes K, but the backbone gives d={dim} "
            f"and the dataset has K={num_classes}: choose a backbone with a wider feature layer (e.g. backbone.dim={num_classes})"
        )


def create_head(name: str, num_classes: int, dim: int, **options) -> Head:
    """Build a head by its config name (HEADS: learned, fixed_etf, nearest_etf, ...); options are the keys of
    configs/head/<name>.yaml (and `solver`, the solver group, for heads that solve for their classifier)."""
    if "solver" in options and "solver" not in inspect.signature(HEADS.get(name)).parameters:
        solving = [n for n in HEADS if "solver" in inspect.signature(HEADS.get(n)).parameters]
        raise EtfTrainError(
            f"the solver group applies to head={' or head='.join(solving)} only; head={name} has no "
            "solver: drop solver=..."
        )
    return HEADS.build(name, num_classes, dim, **options)


def heads_with(declaration: str) -> list[str]:
    """The registered heads that declare `declaration` (e.g. fixed_geometry), by config name."""
    return [name for name in HEADS if getattr(HEADS.get(name), declaration)]
