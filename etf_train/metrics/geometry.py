"""The neural-collapse metrics' formulas, as pure functions of small matrices (the class means' Gram, their SVD, the
within-class moments): etf_train/metrics/nc.py streams a split into these inputs and names each metric."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def nc1_from_projections(projected: Tensor, S: Tensor, dim: int) -> Tensor:
    """NC1 = tr(S_W S_B^+) / K with S_B = Hc Hc^T / K, from the thin SVD Hc = U S V^T and the within-class moment
    along its directions, projected_i = u_i^T (N S_W) u_i: no d x d matrix at all.

    S_B^+ = K U S^-2 U^T, so N NC1 = sum_i projected_i / s_i^2 over the kept singular values.
    Rank tolerance: singular values s_i <= sqrt(d * eps_float64) * s_max are dropped. That is the
    rank decision torch.linalg.pinv(S_B) makes at its default rtol = d * eps on the eigenvalues
    s_i^2 / K of S_B, so the result equals the dense definition. Hc always has the null vector
    (n_c)_c, since sum_c n_c (mu_c - mu_G) = 0, hence rank(Hc) <= min(d, K-1) (K-1 when the class
    means are in general position); that direction must be cut, not inverted.
    projected: (r,), S: (r,) descending, dim: d -> scalar, N NC1
    """
    keep = S > math.sqrt(dim * torch.finfo(S.dtype).eps) * S[0]
    # no between-class spread at all (every class mean equal: e.g. features collapsed to 0): undefined, not 0
    return torch.where(keep.any(), (projected[keep] / S[keep].square()).sum(), torch.nan)


def numerical_rank(S: Tensor, shape: tuple[int, int]) -> Tensor:
    """Number of singular values s_i > max(m, n) * eps * s_max of an m x n matrix: numpy.linalg.matrix_rank's
    (and torch.linalg.matrix_rank's) default tolerance, i.e. rank up to the rounding of the matrix itself.
    S: (r,) descending -> integer scalar"""
    return (S > max(shape) * torch.finfo(S.dtype).eps * S[0]).sum()


def participation_ratio(S: Tensor, tol: float) -> Tensor:
    """(tr S)^2 / ||S||_F^2 = (sum_i lambda_i)^2 / sum_i lambda_i^2 of a symmetric PSD S: between 1 and its rank, the
    number of equally strong directions it spreads over. 0 when tr S <= tol: the ratio is scale-free, so the
    rounding left in a collapsed S would otherwise read as a spread.  S: (d, d) -> scalar"""
    trace = S.trace()
    sq_frobenius = torch.linalg.vector_norm(S).square()  # one pass over S, no (d, d) temporary
    return torch.where(trace > tol, trace.square() / sq_frobenius.clamp_min(torch.finfo(S.dtype).tiny), 0.0)


def cdnv(var: Tensor, G: Tensor) -> Tensor:
    """Class-distance normalised variance (Galanti et al. 2022): mean over pairs i < j of
    (Var_i + Var_j) / (2 ||mu_i - mu_j||^2), with ||mu_i - mu_j||^2 = G_ii + G_jj - 2 G_ij from the Gram matrix
    G of the (centred or not) class means. var: (K,), G: (K, K) -> scalar"""
    K = G.shape[-1]
    i, j = torch.triu_indices(K, K, offset=1, device=G.device)
    sq_dist = G.diagonal()[i] + G.diagonal()[j] - 2.0 * G[i, j]  # (K(K-1)/2,)
    return ((var[i] + var[j]) / (2.0 * sq_dist)).mean()


def norm_ratio(norms: Tensor) -> Tensor:
    """max / min of K norms: 1 for equal norms; large when some classes (minority collapse: the rare ones) shrink."""
    return norms.max() / norms.min()


def nc2(G: Tensor) -> Tensor:
    """|| G / ||G||_F - M / sqrt(K-1) ||_F: distance of a Gram-like K x K matrix from the simplex ETF Gram."""
    K = G.shape[-1]
    M = torch.eye(K, dtype=G.dtype, device=G.device) - 1.0 / K
    return torch.linalg.matrix_norm(G / torch.linalg.matrix_norm(G) - M / math.sqrt(K - 1))


def equinorm(norms: Tensor) -> Tensor:
    """Coefficient of variation std / mean of K norms (std with Bessel's correction, as torch.std)."""
    return norms.std() / norms.mean()


def equiangularity(G: Tensor) -> Tensor:
    """Mean over pairs i < j of |cos_ij + 1/(K-1)|, from the K x K Gram matrix G of K vectors."""
    K = G.shape[-1]
    norms = G.diagonal().sqrt()  # (K,)
    cos = G / (norms[:, None] * norms[None, :])  # (K, K)
    i, j = torch.triu_indices(K, K, offset=1, device=G.device)
    return (cos[i, j] + 1.0 / (K - 1)).abs().mean()
