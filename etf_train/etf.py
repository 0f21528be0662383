"""Pure simplex-ETF geometry: the centring matrix, ETFs from Stiefel points, random Stiefel points."""

from __future__ import annotations

import math

import torch


def centring_matrix(K: int, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """M = I_K - (1/K) 1 1^T: symmetric, idempotent, rank K-1.  # (K, K)"""
    eye = torch.eye(K, dtype=dtype, device=device)
    return eye - 1.0 / K


def simplex_etf(P: torch.Tensor) -> torch.Tensor:
    """Classifier rows of the simplex ETF on the Stiefel point P.

    W = sqrt(K/(K-1)) M P^T, so rows have unit norm and pairwise cosine -1/(K-1).
    P: (..., d, K) with P^T P = I_K  ->  W: (..., K, d)
    """
    K = P.shape[-1]
    Pt = P.transpose(-1, -2)  # (..., K, d)
    # M P^T = P^T - mean over the K rows, without forming M.
    return math.sqrt(K / (K - 1)) * (Pt - Pt.mean(dim=-2, keepdim=True))


def random_stiefel(
    d: int, K: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None, device=None
) -> torch.Tensor:
    """A Haar-random point of St(d, K): Q of the QR of a Gaussian d x K matrix, signs fixed by diag(R).  # (d, K)"""
    if d < K:
        raise ValueError(f"St(d, K) needs d >= K, got d={d}, K={K}")
    dtype = dtype or torch.get_default_dtype()
    G = torch.randn(d, K, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R)).unsqueeze(0)
    return Q.to(dtype=dtype, device=device)


def canonical_stiefel(d: int, K: int, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """The first K columns of I_d, the authors' reference point on St(d, K).  # (d, K)"""
    return torch.eye(d, K, dtype=dtype, device=device)
