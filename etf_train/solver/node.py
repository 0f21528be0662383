"""The nearest simplex ETF: the inner problem of the nearest-ETF head and its gradient.

    P* = argmin_{P in St(d,K)} ||H - P M / sqrt(K-1)||_F^2 + (delta/2) ||P - P_prev||_F^2

On St(d, K) this is const - tr(P^T A) with A = (2/sqrt(K-1)) H M + delta P_prev, so P* is the
orthogonal polar factor of A (orthogonal Procrustes). Three exact forward routes:

- ``svd``: P = U V^T from one batched thin SVD of A;
- ``gram``: the same P from the K x K Gram matrix A^T A = V S^2 V^T factorised in float64
  (cheaper than an SVD of the d x K matrix when d >> K, and GPU friendly);
- ``riemannian``: a batched Riemannian trust-region solver on St(d, K) (truncated CG on the
  exact Riemannian Hessian), the general tool should the objective gain terms without a closed form;
- ``newton``: the scaled Newton iteration for the polar factor, a fixed number of matrix products and Cholesky
  factorisations (newton.py): the one route that never synchronises a GPU with the host.

Three backward routes: ``polar`` (closed-form VJP of the polar factor, O(d K^2); with ``newton``, autograd through
its iterations, which needs no eigendecomposition and equals the closed form at convergence), ``ddn`` (the generic
equality-constrained implicit differentiation of Gould et al., dense, slow, a cross-check) and
``none`` (P treated as a constant, the paper's ablation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from ..errors import EtfTrainError, NonFiniteError
from .ddn import ddn_vjp
from .newton import polar_newton
from .polar import (
    factors_from_solution,
    polar_factors,
    polar_from_factors,
    polar_vjp,
    procrustes_target,
)
from .riemannian import SolveInfo, riemannian_trust_region

METHODS = ("svd", "gram", "riemannian", "newton")
BACKWARDS = ("polar", "ddn", "none")


def _solve(H, prev, delta, method, opts):
    """Forward solve without graph.  -> P, (U, S, Vh) or None, SolveInfo"""
    A = procrustes_target(H, prev, delta)
    if method == "riemannian":
        init = opts.pop("init", None)
        # on a GPU the stopping tests stay on the device: reading them would wait for it at every iteration
        early_exit = A.device.type == "cpu"
        P, info = riemannian_trust_region(A, prev if init is None else init.to(A), early_exit=early_exit, **opts)
        return P, A, None, info
    if method == "newton":
        return polar_newton(A, **opts), A, None, SolveInfo()
    U, S, Vh = polar_factors(A, method)
    return polar_from_factors(U, Vh), A, (U, S, Vh), SolveInfo()


class _NearestETFNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, H, prev, spec):
        delta, method, backward, opts, info_out = spec  # one argument: apply costs ~1 us per argument
        P, A, factors, info = _solve(H, prev, delta, method, dict(opts))
        info_out.append(info)
        if backward == "polar":
            U, S, Vh = factors if factors is not None else factors_from_solution(P, A)
            ctx.save_for_backward(U, S, Vh)
        else:  # prev is a copy: a head writes the new P into the very buffer it passed as prev
            ctx.save_for_backward(H, prev.clone(), P)
        ctx.delta, ctx.backward = delta, backward
        return P

    @staticmethod
    def backward(ctx, G):
        if ctx.backward == "polar":
            U, S, Vh = ctx.saved_tensors
            need_H, need_prev = ctx.needs_input_grad[:2]
            # dL/dH = (dL/dA) (2/sqrt(K-1)) M, dL/dprev = delta dL/dA
            gH = polar_vjp(G, U, S, Vh, 2.0 / math.sqrt(G.shape[-1] - 1)) if need_H else None
            gprev = ctx.delta * polar_vjp(G, U, S, Vh) if need_prev else None
            return gH, gprev, None
        gH, gprev = ddn_vjp(G, *ctx.saved_tensors, ctx.delta)
        return gH, gprev, None


def autocast_off(device_type: str):
    """A context that disables autocast, or nothing when it is off already (entering one costs ~10 us)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype), skipping the call (a few us) when x has that dtype already."""
    return x if x.dtype == dtype else x.to(dtype)


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
    ``method``: svd | gram | riemannian (solver_opts: max_iters, grad_tol, max_inner, init) | newton (iters);
    ``backward``: polar | ddn | none.  ``check`` validates prev and H (costs a host sync).
    With ``return_info`` returns (P, SolveInfo), whose ``finite`` flags a non-finite H or P on the device.
    """
    _validate(H, prev, delta, method, backward, check)
    out_dtype = H.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    info_out: list[SolveInfo] = []
    with autocast_off(H.device.type):
        Hw, pw = _cast(H, work), _cast(prev, work)
        needs_grad = torch.is_grad_enabled() and (H.requires_grad or prev.requires_grad)
        if backward == "none" or not needs_grad:
            with torch.no_grad():
                P, _, _, info = _solve(Hw, pw, delta, method, dict(solver_opts))
            info_out.append(info)
        elif method == "newton" and backward == "polar":  # autograd through the iterations: no eigh, no host sync
            P = polar_newton(procrustes_target(Hw, pw, delta), **solver_opts)
            info_out.append(SolveInfo())
        else:
            P = _NearestETFNode.apply(Hw, pw, (delta, method, backward, solver_opts, info_out))
    P = _cast(P, out_dtype)
    if not return_info:
        return P
    return P, dataclasses.replace(info_out[0], finite=torch.isfinite(H).all() & torch.isfinite(P).all())
