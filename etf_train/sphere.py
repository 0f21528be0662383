"""The feature normalisation every head shares, h = tau f / max(||f||, eps), as one autograd node.

F.normalize's autograd graph (norm, clamp, expand, div, then the scale) makes six to eight passes over the (B, d)
features in its backward, memory-bound passes that weigh on a head's step at UFM sizes (docs/benchmarks.md); this
node saves h and r and makes three: forward h = r f with r = tau / max(||f||, eps), backward (rows with ||f|| > eps)

    dL/df = r (g - h (h . g) / tau^2)        (the projection of g off h, scaled by r)

and dL/df = r g where the clamp holds (F.normalize's gradient there). Not twice differentiable (it says so).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

EPS = 1e-12  # F.normalize's default


def _scale(f: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(||f||, r = tau / max(||f||, eps)) per row; r is NaN where ||f|| overflows (features of a diverged run, whose
    h would otherwise read as 0: perfect collapse), so the loss is NaN and the run stops there.
    f: (..., d) -> (..., 1), (..., 1)"""
    norm = torch.linalg.vector_norm(f, dim=-1, keepdim=True)
    return norm, torch.where(torch.isfinite(norm), tau / norm.clamp_min(EPS), torch.nan)


class _Sphere(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f: torch.Tensor, tau: float) -> torch.Tensor:
        norm, r = _scale(f, tau)
        h = f * r  # (..., d)
        ctx.save_for_backward(h, torch.where(norm > EPS, r / tau**2, 0.0), r)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        h, c, r = ctx.saved_tensors
        return torch.addcmul(g * r, h, (g * h).sum(-1, keepdim=True) * c, value=-1.0), None


def sphere(f: torch.Tensor, tau: float) -> torch.Tensor:
    """tau f / max(||f||_2, 1e-12) over the last dim, as tau * F.normalize(f, dim=-1) but cheaper to differentiate.
    f: (..., d) -> (..., d)"""
    if f.requires_grad and torch.is_grad_enabled():
        return _Sphere.apply(f, float(tau))
    return f * _scale(f, float(tau))[1]
