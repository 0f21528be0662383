"""The closed form of the nearest-ETF problem: the Procrustes target A, its polar factor and the polar factor's
closed-form backward (method.md).

Layout: LAPACK factorises column-major matrices (torch copies a row-major A first), and on CPU a (d x K) @ (K x K)
product runs fastest written as its transpose, (K x K) @ (K x d) into a row-major K x d result. So P and the
gradient are computed transposed and come out column-major (their transposes contiguous), and so does A for small K.
"""

from __future__ import annotations

import functools
import math

import torch

from ..errors import EtfTrainError, NonFiniteError
from ..etf import centring_matrix

CENTRE_BY_PRODUCT_MAX_K = 64  # measured on CPU (d = 512, 2048): one K x K product is cheaper up to K ~ 64-100


@functools.cache
def _scaled_centring(K: int, scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """scale M, cached; built outside inference mode, so an ordinary tensor however the first call was made.  # (K, K)"""
    with torch.inference_mode(False):
        return scale * centring_matrix(K, dtype=dtype, device=device)


def centre(X: torch.Tensor, scale: float) -> torch.Tensor:
    """scale M X = scale (X - 1 (1^T X) / K), M centring the K rows of X.  X: (..., K, n) -> (..., K, n)

    Up to K = CENTRE_BY_PRODUCT_MAX_K one product with a cached K x K matrix (one kernel instead of three: small K
    is bound by per-call overhead); above it a mean subtraction, O(K n) instead of the product's O(K^2 n).
    """
    K = X.shape[-2]
    if K <= CENTRE_BY_PRODUCT_MAX_K:
        return _scaled_centring(K, scale, X.dtype, X.device) @ X
    return scale * (X - X.mean(dim=-2, keepdim=True))


def procrustes_target(H: torch.Tensor, prev: torch.Tensor, delta: float) -> torch.Tensor:
    """A = (2/sqrt(K-1)) H M + delta P_prev, computed as A^T = (2/sqrt(K-1)) M H^T + delta P_prev^T.

    Column-major for K <= CENTRE_BY_PRODUCT_MAX_K.  H, prev: (..., d, K) -> (..., d, K)
    """
    K = H.shape[-1]
    return centre(H.mT, 2.0 / math.sqrt(K - 1)).add_(prev.mT, alpha=delta).mT


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
    U^T = S^{-1} V^T A^T (the Gram matrix squares the condition number, hence float64). A float32 SVD that
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
        evals, V = torch.linalg.eigh(A64.mT @ A64)  # (..., K), (..., K, K) ascending
    except torch.linalg.LinAlgError:
        if not torch.isfinite(A).all():
            raise NonFiniteError("nearest_etf: the class means hold NaN or inf: the features diverged") from None
        raise EtfTrainError(f"nearest_etf: the {method} factorisation failed to converge, even in float64") from None
    S = evals.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    Ut = (V.mT @ A64.mT) / S.unsqueeze(-1)  # (..., K, d): U column-major, as torch.linalg.svd returns it
    return Ut.mT.to(A.dtype), S.to(A.dtype), V.mT.to(A.dtype)


def factors_from_solution(P: torch.Tensor, A: torch.Tensor):
    """(U, S, Vh) of A from its polar factor P: P^T A = V S V^T is symmetric positive definite."""
    S, V = torch.linalg.eigh(sym(P.transpose(-1, -2) @ A))  # (..., K), (..., K, K)
    return P @ V, S, V.transpose(-1, -2)


def polar_from_factors(U: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    """P = U V^T, computed as P^T = V U^T.  U: (..., d, K), Vh: (..., K, K) -> (..., d, K), column-major"""
    return (Vh.mT @ U.mT).mT


def polar_vjp(G: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, scale: float | None = None):
    """dL/dA for P = polar(A), A = U S V^T full rank, upstream G = dL/dP; with ``scale`` c, (dL/dA) c M instead
    (the gradient into H of A = c H M + delta P_prev).

        Y = U^T G V,  dL/dA = U [(Y - Y^T) / (s_i + s_j)] V^T + (I - U U^T) G V S^{-1} V^T
                            = U Z V^T + G V S^{-1} V^T,  Z = (Y - Y^T) / (s_i + s_j) - Y S^{-1}

    (the projection expanded), computed transposed, (dL/dA)^T = (Q Z^T) U^T + (Q S^{-1} V^T) G^T with Q = V
    (Q = c M V with the scale): U^T G and the two last products are d x K, the rest K x K.
    O(d K^2) time, O(d K) memory.  G, U: (..., d, K), S: (..., K), Vh: (..., K, K) -> (..., d, K), column-major
    """
    Ut, V = U.mT, Vh.mT
    Y = Ut @ G @ V  # (..., K, K)
    Yt, s = Y.mT, S.unsqueeze(-1)  # s: (..., K, 1)
    Zt = torch.addcdiv((Yt - Y) / (s + S.unsqueeze(-2)), Yt, s, value=-1)  # Z^T
    Q = V if scale is None else centre(V, scale)  # (..., K, K)
    return ((Q @ Zt) @ Ut).add_((Q @ (Vh / s)) @ G.mT).mT
