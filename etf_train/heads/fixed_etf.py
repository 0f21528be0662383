"""A frozen simplex ETF classifier (Yang et al. 2022; the authors' fixed-ETF baseline with center=batch)."""

from __future__ import annotations

from .. import options as opt
from ..etf import simplex_etf
from .base import Head, check_etf_dims, reference_point, register_head


@register_head("fixed_etf")
class FixedETFHead(Head):
    """A frozen simplex ETF W = sqrt(K/(K-1)) M P0^T on a fixed basis P0 (identity, or seeded random as in Yang et
    al. 2022). center="batch" adds the authors' bias b = -W mean_batch(h), computed from the batch at hand (training
    and evaluation alike, as their code does, so evaluation then depends on how the split is batched) with no
    gradient."""

    fixed_geometry = True

    def __init__(self, num_classes, dim, tau=5.0, normalize=True, basis="identity", seed=0, center="none"):
        super().__init__(num_classes, dim, tau, normalize)
        check_etf_dims("fixed_etf", num_classes, dim)
        self.center = opt.choice("head.center", center, ("none", "batch"))
        self.register_buffer("W", simplex_etf(reference_point(dim, num_classes, basis, seed)))  # (K, d)

    @property
    def weight(self):
        return self.W

    def classify(self, h, y=None):
        W = self.W.to(h.dtype)
        logits = h @ W.T  # (B, K)
        return logits - W @ h.detach().mean(0) if self.center == "batch" else logits
