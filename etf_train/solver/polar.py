"""The closed form of the nearest-ETF problem: the Procrustes target A, its polar factor and the polar factor's
closed-form backward (method.md)."""

from __future__ import annotations

import math

import torch

from ..errors import EtfTrainError, NonFiniteError


def procrustes_target(H: torch.Tensor, prev: torch.Tensor, delta: float) -> torch.Tensor:
    """A = (2/sqrt(K-1)) H M + delta P_prev.  H, prev: (..., d, K) -> (..., d, K)"""
    K = H.shape[-1]
    HM = H - H.mean(dim=-1, keepdim=True)  # H M without forming M
    return (2.0 / math.sqrt(K - 1)) * HM + delta * prev


def objective(P: torch.Tensor, H: torch.Tensor, prev: torch.Tensor, delta: float) -> torch.Tensor:
    """||H - P M/sqrt(K-1)||_F^2 + (delta/2)||P - prev||_F^2, batched.  -> (...,)"""
    K = P.shape[-1]
    PM = P - P.mean(dim=-1, keepdim=True)
    fit = (H - PM / math.sqrt(K - 1)).square().sum((-2, -1))
    return fit + 0.5 * delta * (P - prev).square().sum((-2, -1))


def sym(X: torch.Tensor) -> torch.Tensor:
    return 0.5 * (X + X.transpose(-1, -2))


def inner(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Frobenius inner product over the last two dims.  -> (...,)"""
    return (X * Y).sum((-2, -1))


def tangent_project(P: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Proj_P(Z) = Z - P sym(P^T Z), the projection onto T_P St(d, K) (embedded metric)."""
    return Z - P @ sym(P.transpose(-1, -2) @ Z)


def polar_factors(A: torch.Tensor, method: str = "svd"):
    """(U, S, Vh) of the thin SVD A = U diag(S) V^T of a full-rank tall A, so that polar(A) = U Vh.

    ``svd`` calls torch.linalg.svd; ``gram`` eigendecomposes A^T A = V S^2 V^T in float64 and sets
    U = A V S^{-1} (the Gram matrix squares the condition number, hence float64). A float32 SVD that
    fails to converge is retried in float64; non-finite input raises NonFiniteError.
    A: (..., d, K) -> U (..., d, K), S (..., K), Vh (..., K, K)
    """
    try:
        if method == "svd":
            try:
                return torch.linalg.svd(A, full_matrices=False)
            except torch.linalg.LinAlgError:
                if A.dtype == torch.float64 or not torch.isfinite(A).all():
                    raise
                U, S, Vh = torch.linalg.svd(A.double(), full_matrices=False)
                return U.to(A.dtype), S.to(A.dtype), Vh.to(A.dtype)
        A64 = A.double()
        evals, V = torch.linalg.eigh(A64.transpose(-1, -2) @ A64)  # (..., K), (..., K, K) ascending
    except torch.linalg.LinAlgError:
        if not torch.isfinite(A).all():
            raise NonFiniteError(
                "nearest_etf: the class means hold NaN or inf: the features diverged (lower optimizer.lr)"
            ) from None
        raise EtfTrainError(f"nearest_etf: the {method} factorisation failed to converge, even in float64") from None
    S = evals.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    U = (A64 @ V) / S.unsqueeze(-2)
    return U.to(A.dtype), S.to(A.dtype), V.transpose(-1, -2).to(A.dtype)


def factors_from_solution(P: torch.Tensor, A: torch.Tensor):
    """(U, S, Vh) of A from its polar factor P: P^T A = V S V^T is symmetric positive definite."""
    S, V = torch.linalg.eigh(sym(P.transpose(-1, -2) @ A))  # (..., K), (..., K, K)
    return P @ V, S, V.transpose(-1, -2)


def polar_vjp(G: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    """dL/dA for P = polar(A), A = U S V^T full rank, upstream G = dL/dP:

        Y = U^T G V,  dL/dA = U [(Y - Y^T) / (s_i + s_j)] V^T + (I - U U^T) G V S^{-1} V^T

    O(d K^2) time, O(d K) memory.  G, U: (..., d, K), S: (..., K), Vh: (..., K, K) -> (..., d, K)
    """
    V = Vh.transpose(-1, -2)
    UtG = U.transpose(-1, -2) @ G  # (..., K, K)
    Y = UtG @ V
    skew = (Y - Y.transpose(-1, -2)) / (S.unsqueeze(-1) + S.unsqueeze(-2))
    normal = (G - U @ UtG) @ (V / S.unsqueeze(-2))  # (I - U U^T) G V S^{-1}
    return (U @ skew + normal) @ Vh

