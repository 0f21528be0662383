"""A batched Riemannian trust-region solver on St(d, K) for f(P) = -tr(P^T A), equal to the nearest-ETF
objective up to constants: the general tool should the objective gain terms without a closed form."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .polar import inner, sym, tangent_project

# tCG iterations per trust-region step without early exit: at K = 10 and 100 (d = 128, 512, warm starts) 20 keep the
# early-exit solve's float64 accuracy (within 2e-11 of the closed form) and 10 do not (docs/benchmarks.md).
FIXED_INNER = 20


@dataclass
class SolveInfo:
    """What the forward solve reports: iterations and final Riemannian gradient norm (riemannian only), and whether
    its input and result are finite (nearest_etf's return_info), as a device tensor: a NaN need not raise on every
    device (cuSOLVER's SVD, the Newton iteration), and reading the flag on the host would wait for the device."""

    iters: torch.Tensor | None = None  # (...,) long
    grad_norm: torch.Tensor | None = None  # (...,)
    finite: torch.Tensor | None = None  # () bool


def _qr_retract(P: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """R_P(xi) = qf(P + xi), the Q factor with a positive diagonal of R."""
    Q, R = torch.linalg.qr(P + xi)
    sign = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    return Q * torch.where(sign == 0, torch.ones_like(sign), sign).unsqueeze(-2)


def _tcg(P, grad, sPA, radius, max_inner, early_exit, kappa=0.1, theta=1.0):
    """Steihaug-Toint truncated CG for min_eta <grad, eta> + 1/2 <eta, Hess eta> within ||eta|| <= radius.

    Hess[xi] = Proj_P(xi sym(P^T A)) (f is linear in P, so only the curvature of St(d, K) remains).
    Batched: each problem stops on its own; finished ones are frozen by masks, so the loop may run on after all have
    stopped (early_exit=False: no host read of a stopping test) without changing the result.
    Returns eta, Hess[eta], and whether eta reached the trust-region boundary.  # (..., d, K), (..., d, K), (...,)
    """
    hess = lambda xi: tangent_project(P, xi @ sPA)  # noqa: E731
    eta = torch.zeros_like(grad)
    Heta = torch.zeros_like(grad)
    r = grad.clone()
    d = -r
    rr = inner(r, r)
    r0 = rr.sqrt()
    stop_at = r0 * torch.minimum(r0.pow(theta), torch.full_like(r0, kappa))
    active = torch.ones_like(r0, dtype=torch.bool)
    boundary = torch.zeros_like(active)
    bcast = lambda t: t.unsqueeze(-1).unsqueeze(-1)  # noqa: E731
    for _ in range(max_inner):
        Hd = hess(d)
        dHd = inner(d, Hd)
        alpha = rr / torch.where(dHd == 0, torch.ones_like(dHd), dHd)
        eta_new = eta + bcast(alpha) * d
        leave = active & ((dHd <= 0) | (inner(eta_new, eta_new) >= radius**2))
        # Step to the boundary along d: ||eta + tau d|| = radius.
        ed, dd, ee = inner(eta, d), inner(d, d), inner(eta, eta)
        tau = (-ed + (ed**2 + dd * (radius**2 - ee)).clamp_min(0).sqrt()) / dd.clamp_min(1e-300)
        eta = torch.where(bcast(leave), eta + bcast(tau) * d, eta)
        Heta = torch.where(bcast(leave), Heta + bcast(tau) * Hd, Heta)
        boundary = boundary | leave
        active = active & ~leave
        step = bcast(active)
        eta = torch.where(step, eta_new, eta)
        Heta = torch.where(step, Heta + bcast(alpha) * Hd, Heta)
        r = torch.where(step, r + bcast(alpha) * Hd, r)
        rr_new = inner(r, r)
        active = active & (rr_new.sqrt() > stop_at)
        if early_exit and not active.any():
            break
        beta = rr_new / rr.clamp_min(1e-300)
        # Re-project so round-off cannot leave the tangent space (it would fake negative curvature).
        d = torch.where(bcast(active), tangent_project(P, -r + bcast(beta) * d), d)
        rr = rr_new
    return eta, Heta, boundary


def riemannian_trust_region(
    A: torch.Tensor,
    init: torch.Tensor,
    max_iters: int = 100,
    grad_tol: float | None = None,
    max_inner: int | None = None,
    early_exit: bool = True,
) -> tuple[torch.Tensor, SolveInfo]:
    """Minimise f(P) = -tr(P^T A) on St(d, K) by Riemannian trust-region (Absil et al. 2007), from ``init``.

    grad f(P) = Proj_P(-A);  Hess f(P)[xi] = Proj_P(xi sym(P^T A)).
    Stops per problem when ||grad f|| <= grad_tol * ||A||_F (default 1e4 eps of the dtype, just above the
    round-off floor of the gradient) or when round-off makes the trust region collapse. A stopped problem is frozen by
    masks; early_exit leaves the loops once every problem has stopped, which reads a flag on the host (a device
    synchronisation on a GPU); without it the loops run max_iters x max_inner (default FIXED_INNER) iterations.
    A, init: (..., d, K) -> P (..., d, K), SolveInfo(iters (...,), grad_norm (...,))
    """
    d, K = A.shape[-2:]
    eps = torch.finfo(A.dtype).eps
    grad_tol = grad_tol if grad_tol is not None else 1e4 * eps
    max_inner = max_inner or (d * K if early_exit else FIXED_INNER)
    bcast = lambda t: t.unsqueeze(-1).unsqueeze(-1)  # noqa: E731
    scale = A.flatten(-2).norm(dim=-1)  # (...,)
    P = init.clone()
    radius_max = math.sqrt(K)  # the diameter scale of St(d, K)
    radius = torch.full_like(scale, radius_max / 8)
    f = -inner(P, A)
    grad = tangent_project(P, -A)
    gnorm = grad.flatten(-2).norm(dim=-1)
    iters = torch.zeros_like(scale, dtype=torch.long)
    for _ in range(max_iters):
        todo = (gnorm > grad_tol * scale) & (radius > eps * radius_max)
        if early_exit and not todo.any():
            break
        sPA = sym(P.transpose(-1, -2) @ A)
        eta, Heta, boundary = _tcg(P, grad, sPA, radius, max_inner, early_exit)
        P_new = _qr_retract(P, eta)
        f_new = -inner(P_new, A)
        # Regularised ratio (as manopt does) so that round-off near convergence cannot reject good steps.
        reg = 1e3 * eps * torch.maximum(f.abs(), torch.ones_like(f))
        rho = (f - f_new + reg) / (-inner(grad, eta) - 0.5 * inner(eta, Heta) + reg)
        radius = torch.where(todo & (rho < 0.25), radius / 4, radius)
        radius = torch.where(todo & (rho > 0.75) & boundary, (2 * radius).clamp_max(radius_max), radius)
        accept = todo & (rho > 0.1)
        P = torch.where(bcast(accept), P_new, P)
        f = torch.where(accept, f_new, f)
        grad = torch.where(bcast(accept), tangent_project(P, -A), grad)
        gnorm = grad.flatten(-2).norm(dim=-1)
        iters = iters + todo.long()
    return P, SolveInfo(iters=iters, grad_norm=gnorm)
