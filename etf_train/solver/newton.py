"""The polar factor from matrix products and a Cholesky factorisation alone: a solve that never waits for the host.

torch.linalg.svd and eigh check their result on the host (a device synchronisation per call on a GPU, which stalls
the queue of kernels the CPU runs ahead with); cholesky_ex reports failure in a tensor and triangular solves report
none, so a fixed number of these iterations runs without one.
"""

from __future__ import annotations

import torch

DEFAULT_ITERS = 10  # measured: 6-8 iterations reach the float64 floor from condition numbers 6 to 1e7


def polar_newton(A: torch.Tensor, iters: int = DEFAULT_ITERS) -> torch.Tensor:
    """P = polar(A) by the scaled Newton iteration for the polar decomposition (Higham, Functions of Matrices, 2008,
    sec. 8.6), in its form for a tall A of full column rank:

        X_0 = A / ||A||_F,   X_{k+1} = (mu_k X_k + X_k (X_k^T X_k)^{-1} / mu_k) / 2,
        mu_k = (||X_k^+||_F / ||X_k||_F)^{1/2} = (tr (X_k^T X_k)^{-1} / tr X_k^T X_k)^{1/4}

    with (X^T X)^{-1} = L^{-T} L^{-1} from the Cholesky factor L, so tr (X^T X)^{-1} = ||L^{-1}||_F^2. A fixed
    iteration count: a convergence test would read a value on the host. In float64 whatever A's dtype (X^T X squares
    the condition number). Differentiable: autograd through the iterations gives the derivative of the converged
    polar factor, which the Newton iteration's own derivative converges to (Higham, sec. 8.6 and 3.2).
    A: (..., d, K), d >= K -> P (..., d, K) in A's dtype
    """
    X = A.double()
    X = X / X.flatten(-2).norm(dim=-1)[..., None, None]
    eye = torch.eye(A.shape[-1], dtype=X.dtype, device=X.device)
    for _ in range(iters):
        L, _ = torch.linalg.cholesky_ex(X.mT @ X)  # (..., K, K); failure (a NaN input) shows as NaN, never raises
        L_inv = torch.linalg.solve_triangular(L, eye, upper=False)  # (..., K, K)
        mu = ((L_inv.square().sum((-2, -1)) / X.square().sum((-2, -1))) ** 0.25)[..., None, None]  # (..., 1, 1)
        X = 0.5 * (mu * X + ((X @ L_inv.mT) @ L_inv) / mu)
    return X.to(A.dtype)
