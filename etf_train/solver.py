"""The nearest simplex ETF: the inner problem of the nearest-ETF head and its gradient.

    P* = argmin_{P in St(d,K)} ||H - P M / sqrt(K-1)||_F^2 + (delta/2) ||P - P_prev||_F^2

On St(d, K) this is const - tr(P^T A) with A = (2/sqrt(K-1)) H M + delta P_prev, so P* is the
orthogonal polar factor of A (orthogonal Procrustes). Three exact forward routes:

- ``svd``: P = U V^T from one batched thin SVD of A;
- ``gram``: the same P from the K x K Gram matrix A^T A = V S^2 V^T factorised in float64
  (cheaper than an SVD of the d x K matrix when d >> K, and GPU friendly);
- ``riemannian``: a batched Riemannian trust-region solver on St(d, K) (truncated CG on the
  exact Riemannian Hessian), the general tool should the objective gain terms without a closed form.

Three backward routes: ``polar`` (closed-form VJP of the polar factor, O(d K^2)), ``ddn`` (the generic
equality-constrained implicit differentiation of Gould et al., dense, slow, a cross-check) and
``none`` (P treated as a constant, the paper's ablation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import EtfTrainError, NonFiniteError
from .etf import centring_matrix

METHODS = ("svd", "gram", "riemannian")
BACKWARDS = ("polar", "ddn", "none")


@dataclass
class SolveInfo:
    """What the forward solve reports: iterations and final Riemannian gradient norm (riemannian only)."""

    iters: torch.Tensor | None = None  # (...,) long
    grad_norm: torch.Tensor | None = None  # (...,)


# ---------------------------------------------------------------------------------------------
# Small pure pieces


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


def _sym(X: torch.Tensor) -> torch.Tensor:
    return 0.5 * (X + X.transpose(-1, -2))


def _inner(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Frobenius inner product over the last two dims.  -> (...,)"""
    return (X * Y).sum((-2, -1))


def tangent_project(P: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Proj_P(Z) = Z - P sym(P^T Z), the projection onto T_P St(d, K) (embedded metric)."""
    return Z - P @ _sym(P.transpose(-1, -2) @ Z)


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
    S, V = torch.linalg.eigh(_sym(P.transpose(-1, -2) @ A))  # (..., K), (..., K, K)
    return P @ V, S, V.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# Riemannian trust-region on St(d, K) for f(P) = -tr(P^T A) (equal to the objective up to constants)


def _qr_retract(P: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """R_P(xi) = qf(P + xi), the Q factor with a positive diagonal of R."""
    Q, R = torch.linalg.qr(P + xi)
    sign = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    return Q * torch.where(sign == 0, torch.ones_like(sign), sign).unsqueeze(-2)


def _tcg(P, grad, sPA, radius, max_inner, kappa=0.1, theta=1.0):
    """Steihaug-Toint truncated CG for min_eta <grad, eta> + 1/2 <eta, Hess eta> within ||eta|| <= radius.

    Hess[xi] = Proj_P(xi sym(P^T A)) (f is linear in P, so only the curvature of St(d, K) remains).
    Batched: each problem stops on its own; finished ones are frozen by masks.
    Returns eta, Hess[eta], and whether eta reached the trust-region boundary.  # (..., d, K), (..., d, K), (...,)
    """
    hess = lambda xi: tangent_project(P, xi @ sPA)  # noqa: E731
    eta = torch.zeros_like(grad)
    Heta = torch.zeros_like(grad)
    r = grad.clone()
    d = -r
    rr = _inner(r, r)
    r0 = rr.sqrt()
    stop_at = r0 * torch.minimum(r0.pow(theta), torch.full_like(r0, kappa))
    active = torch.ones_like(r0, dtype=torch.bool)
    boundary = torch.zeros_like(active)
    bcast = lambda t: t.unsqueeze(-1).unsqueeze(-1)  # noqa: E731
    for _ in range(max_inner):
        Hd = hess(d)
        dHd = _inner(d, Hd)
        alpha = rr / torch.where(dHd == 0, torch.ones_like(dHd), dHd)
        eta_new = eta + bcast(alpha) * d
        leave = active & ((dHd <= 0) | (_inner(eta_new, eta_new) >= radius**2))
        if leave.any():
            # Step to the boundary along d: ||eta + tau d|| = radius.
            ed, dd, ee = _inner(eta, d), _inner(d, d), _inner(eta, eta)
            tau = (-ed + (ed**2 + dd * (radius**2 - ee)).clamp_min(0).sqrt()) / dd.clamp_min(1e-300)
            eta = torch.where(bcast(leave), eta + bcast(tau) * d, eta)
            Heta = torch.where(bcast(leave), Heta + bcast(tau) * Hd, Heta)
            boundary = boundary | leave
            active = active & ~leave
        step = bcast(active)
        eta = torch.where(step, eta_new, eta)
        Heta = torch.where(step, Heta + bcast(alpha) * Hd, Heta)
        r = torch.where(step, r + bcast(alpha) * Hd, r)
        rr_new = _inner(r, r)
        active = active & (rr_new.sqrt() > stop_at)
        if not active.any():
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
) -> tuple[torch.Tensor, SolveInfo]:
    """Minimise f(P) = -tr(P^T A) on St(d, K) by Riemannian trust-region (Absil et al. 2007), from ``init``.

    grad f(P) = Proj_P(-A);  Hess f(P)[xi] = Proj_P(xi sym(P^T A)).
    Stops per problem when ||grad f|| <= grad_tol * ||A||_F (default 1e4 eps of the dtype, just above the
    round-off floor of the gradient) or when round-off makes the trust region collapse.
    A, init: (..., d, K) -> P (..., d, K), SolveInfo(iters (...,), grad_norm (...,))
    """
    d, K = A.shape[-2:]
    eps = torch.finfo(A.dtype).eps
    grad_tol = grad_tol if grad_tol is not None else 1e4 * eps
    max_inner = max_inner or d * K
    bcast = lambda t: t.unsqueeze(-1).unsqueeze(-1)  # noqa: E731
    scale = A.flatten(-2).norm(dim=-1)  # (...,)
    P = init.clone()
    radius_max = math.sqrt(K)  # the diameter scale of St(d, K)
    radius = torch.full_like(scale, radius_max / 8)
    f = -_inner(P, A)
    grad = tangent_project(P, -A)
    gnorm = grad.flatten(-2).norm(dim=-1)
    iters = torch.zeros_like(scale, dtype=torch.long)
    for _ in range(max_iters):
        todo = (gnorm > grad_tol * scale) & (radius > eps * radius_max)
        if not todo.any():
            break
        sPA = _sym(P.transpose(-1, -2) @ A)
        eta, Heta, boundary = _tcg(P, grad, sPA, radius, max_inner)
        P_new = _qr_retract(P, eta)
        f_new = -_inner(P_new, A)
        # Regularised ratio (as manopt does) so that round-off near convergence cannot reject good steps.
        reg = 1e3 * eps * torch.maximum(f.abs(), torch.ones_like(f))
        rho = (f - f_new + reg) / (-_inner(grad, eta) - 0.5 * _inner(eta, Heta) + reg)
        radius = torch.where(todo & (rho < 0.25), radius / 4, radius)
        radius = torch.where(todo & (rho > 0.75) & boundary, (2 * radius).clamp_max(radius_max), radius)
        accept = todo & (rho > 0.1)
        P = torch.where(bcast(accept), P_new, P)
        f = torch.where(accept, f_new, f)
        grad = torch.where(bcast(accept), tangent_project(P, -A), grad)
        gnorm = grad.flatten(-2).norm(dim=-1)
        iters = iters + todo.long()
    return P, SolveInfo(iters=iters, grad_norm=gnorm)


# ---------------------------------------------------------------------------------------------
# Backward passes


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


def ddn_vjp(G, H, prev, P, delta):
    """dL/dH and dL/dprev by the equality-constrained deep declarative node (Gould et al., TPAMI 2021, Prop. 4.5).

    With y = vec(P), constraints h = {p_i^T p_j - delta_ij}_{i<=j} and lambda from lambda^T A_h = D_y f:
        Dy = Hs^{-1} A_h^T (A_h Hs^{-1} A_h^T)^{-1} A_h Hs^{-1} B - Hs^{-1} B   (C = D_x h = 0)
        Hs = D_yy f - sum_k lambda_k D_yy h_k,  B = D_xy f
    so v^T Dy = (t - r)^T B with r = Hs^{-1} v, t = Hs^{-1} A_h^T (A_h Hs^{-1} A_h^T)^{-1} A_h r.
    Everything is dense (m = dK unknowns, p = K(K+1)/2 constraints): for checking, not for training.
    Vectorisation is row-major: P[a, i] -> a K + i, so P -> P X is kron(I_d, X^T).
    All inputs (..., d, K) -> (dL/dH, dL/dprev), each (..., d, K)
    """
    lead = G.shape[:-2]
    d, K = G.shape[-2:]
    out_H, out_prev = [], []
    flat = lambda t: t.reshape(-1, d, K).double()  # noqa: E731
    M = centring_matrix(K, dtype=torch.float64, device=G.device)
    c = 2.0 / math.sqrt(K - 1)
    Id = torch.eye(d, dtype=torch.float64, device=G.device)
    pairs = [(i, j) for i in range(K) for j in range(i, K)]
    for g, h, q, p in zip(flat(G), flat(H), flat(prev), flat(P)):
        Ah = torch.zeros(len(pairs), d, K, dtype=torch.float64, device=G.device)
        for row, (i, j) in enumerate(pairs):
            Ah[row, :, i] += p[:, j]
            Ah[row, :, j] += p[:, i]
        Ah = Ah.reshape(len(pairs), d * K)
        Dyf = (2.0 / (K - 1)) * p @ M - c * h @ M + delta * (p - q)  # Euclidean gradient, (d, K)
        lam = torch.linalg.lstsq(Ah.T, Dyf.reshape(-1, 1)).solution.squeeze(-1)
        Lam = torch.zeros(K, K, dtype=torch.float64, device=G.device)
        for (i, j), l in zip(pairs, lam):
            Lam[i, j] += l
            Lam[j, i] += l  # the diagonal gets 2 lambda_ii: D^2 (p_i^T p_i) = 2 I
        Hs = torch.kron(Id, (2.0 / (K - 1)) * M + delta * torch.eye(K, dtype=torch.float64) - Lam)
        r = torch.linalg.solve(Hs, g.reshape(-1))
        HinvAt = torch.linalg.solve(Hs, Ah.T)  # (m, p)
        t = HinvAt @ torch.linalg.solve(Ah @ HinvAt, Ah @ r)
        w = (t - r).reshape(d, K)
        # B = D_xy f: -c kron(I, M) for x = H and -delta I for x = prev (both symmetric maps).
        out_H.append(-c * w @ M)
        out_prev.append(-delta * w)
    shape = (*lead, d, K)
    return (torch.stack(out_H).reshape(shape).to(G.dtype), torch.stack(out_prev).reshape(shape).to(G.dtype))


# ---------------------------------------------------------------------------------------------
# The node


def _solve(H, prev, delta, method, opts):
    """Forward solve without graph.  -> P, (U, S, Vh) or None, SolveInfo"""
    A = procrustes_target(H, prev, delta)
    if method == "riemannian":
        init = opts.pop("init", None)
        P, info = riemannian_trust_region(A, prev if init is None else init.to(A), **opts)
        return P, A, None, info
    U, S, Vh = polar_factors(A, method)
    return U @ Vh, A, (U, S, Vh), SolveInfo()


class _NearestETFNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, H, prev, delta, method, backward, opts, info_out):
        P, A, factors, info = _solve(H, prev, delta, method, dict(opts))
        info_out.append(info)
        if backward == "polar":
            U, S, Vh = factors if factors is not None else factors_from_solution(P, A)
            ctx.save_for_backward(U, S, Vh)
        else:
            ctx.save_for_backward(H, prev, P)
        ctx.delta, ctx.backward = delta, backward
        return P

    @staticmethod
    def backward(ctx, G):
        K = G.shape[-1]
        if ctx.backward == "polar":
            gA = polar_vjp(G, *ctx.saved_tensors)
            gH = (2.0 / math.sqrt(K - 1)) * (gA - gA.mean(dim=-1, keepdim=True))  # dL/dA M
            return gH, ctx.delta * gA, None, None, None, None, None
        gH, gprev = ddn_vjp(G, *ctx.saved_tensors, ctx.delta)
        return gH, gprev, None, None, None, None, None


def _validate(H, prev, delta, method, backward, check):
    if method not in METHODS:
        raise EtfTrainError(f"nearest_etf: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if backward not in BACKWARDS:
        raise EtfTrainError(f"nearest_etf: unknown backward {backward!r}; choose one of {', '.join(BACKWARDS)}")
    if H.dim() < 2:
        raise EtfTrainError(f"nearest_etf: H must be (..., d, K), got shape {tuple(H.shape)}")
    if H.shape != prev.shape:
        raise EtfTrainError(f"nearest_etf: H {tuple(H.shape)} and prev {tuple(prev.shape)} must have the same shape")
    d, K = H.shape[-2:]
    if K < 2:
        raise EtfTrainError(f"nearest_etf: a simplex ETF needs K >= 2 classes, got K={K}")
    if d < K:
        raise EtfTrainError(
            f"nearest_etf: feature dimension d={d} is smaller than the number of classes K={K}; "
            "a simplex ETF of K classes needs d >= K (use a backbone with a wider feature layer)"
        )
    if not (delta > 0):
        raise EtfTrainError(f"nearest_etf: delta must be > 0 (it makes the minimiser unique), got {delta}")
    if check:
        if not torch.isfinite(H).all():
            raise NonFiniteError("nearest_etf: H holds non-finite values (NaN or inf): the features diverged")
        eye = torch.eye(K, dtype=prev.dtype, device=prev.device)
        err = (prev.transpose(-1, -2) @ prev - eye).abs().amax()
        tol = math.sqrt(torch.finfo(prev.dtype).eps)
        if not err <= tol:
            raise EtfTrainError(f"nearest_etf: prev is not on St(d, K): max |prev^T prev - I| = {err:.2e} > {tol:.1e}")


def nearest_etf(
    H: torch.Tensor,
    prev: torch.Tensor,
    delta: float = 1e-3,
    method: str = "svd",
    backward: str = "polar",
    *,
    check: bool = True,
    return_info: bool = False,
    **solver_opts,
):
    """The Stiefel point of the simplex ETF nearest to the class means H, as a deep declarative node.

        P* = argmin_{P in St(d,K)} ||H - P M/sqrt(K-1)||_F^2 + (delta/2)||P - prev||_F^2 = polar(A),
        A = (2/sqrt(K-1)) H M + delta prev.

    H: (..., d, K) class means (centred here with M), prev: (..., d, K) previous solution on St(d, K)
    (on the first step, a fixed reference point such as ``canonical_stiefel``). Returns P: (..., d, K),
    in H's dtype and device; half precision inputs are solved in float32, autocast is disabled inside.
    ``method``: svd | gram | riemannian (solver_opts: max_iters, grad_tol, max_inner, init);
    ``backward``: polar | ddn | none.  ``check`` validates prev and H (costs a host sync).
    With ``return_info`` returns (P, SolveInfo).
    """
    _validate(H, prev, delta, method, backward, check)
    out_dtype = H.dtype
    work = torch.promote_types(H.dtype, torch.float32)
    info_out: list[SolveInfo] = []
    with torch.autocast(device_type=H.device.type, enabled=False):
        Hw, pw = H.to(work), prev.to(work)
        needs_grad = torch.is_grad_enabled() and (H.requires_grad or prev.requires_grad)
        if backward == "none" or not needs_grad:
            with torch.no_grad():
                P, _, _, info = _solve(Hw, pw, delta, method, dict(solver_opts))
            info_out.append(info)
        else:
            P = _NearestETFNode.apply(Hw, pw, delta, method, backward, solver_opts, info_out)
    P = P.to(out_dtype)
    return (P, info_out[0]) if return_info else P
