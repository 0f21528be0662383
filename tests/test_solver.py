import math

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes

from etf_train import (
    EtfTrainError,
    canonical_stiefel,
    centring_matrix,
    nearest_etf,
    random_stiefel,
    simplex_etf,
)
from etf_train.solver import centre, objective, polar_vjp, procrustes_target
from etf_train.solver.polar import CENTRE_BY_PRODUCT_MAX_K

f64 = torch.float64


def problem(d, K, batch=(), seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(*batch, d, K, generator=g, dtype=f64)
    H = H / H.flatten(-2).norm(dim=-1)[..., None, None]
    prev = torch.stack([random_stiefel(d, K, generator=g, dtype=f64) for _ in range(math.prod(batch))])
    return H.to(dtype), prev.reshape(*batch, d, K).to(dtype)


# --- ETF geometry ------------------------------------------------------------------------------


def test_centring_matrix_is_symmetric_idempotent_rank_k_minus_1():
    M = centring_matrix(7, dtype=f64)
    assert torch.allclose(M, M.T)
    assert torch.allclose(M @ M, M)
    assert torch.linalg.matrix_rank(M) == 6
    assert torch.allclose(M.sum(0), torch.zeros(7, dtype=f64))


@pytest.mark.parametrize("d,K", [(3, 3), (10, 4), (64, 10)])
def test_simplex_etf_unit_rows_and_equal_angles(d, K):
    W = simplex_etf(random_stiefel(d, K, generator=torch.Generator().manual_seed(1), dtype=f64))
    assert W.shape == (K, d)
    G = W @ W.T
    assert torch.allclose(G.diagonal(), torch.ones(K, dtype=f64))
    off = G[~torch.eye(K, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1.0 / (K - 1)))


def test_random_stiefel_orthonormal_and_seeded():
    P = random_stiefel(50, 8, generator=torch.Generator().manual_seed(3), dtype=f64)
    assert torch.allclose(P.T @ P, torch.eye(8, dtype=f64), atol=1e-12)
    assert torch.equal(P, random_stiefel(50, 8, generator=torch.Generator().manual_seed(3), dtype=f64))
    with pytest.raises(ValueError):
        random_stiefel(3, 5)


# --- forward ------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,K", [(5, 5), (20, 4), (64, 10)])
def test_closed_form_matches_scipy_procrustes_and_beats_other_points(d, K):
    H, prev = problem(d, K)
    delta = 1e-3
    P = nearest_etf(H, prev, delta)
    A = procrustes_target(H, prev, delta).numpy()
    # scipy solves min ||I_{dxK}... ; polar(A) = argmax tr(R^T A) over orthonormal R, i.e. procrustes(I, A).
    R, _ = orthogonal_procrustes(np.eye(d, K), A)
    ref = np.eye(d, K) @ R if d == K else None
    if ref is None:  # scipy's procrustes is square: take the polar factor of A from numpy's SVD instead
        U, _, Vt = np.linalg.svd(A, full_matrices=False)
        ref = U @ Vt
    assert np.abs(P.numpy() - ref).max() < 1e-10
    best = objective(P, H, prev, delta)
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        Q = random_stiefel(d, K, generator=g, dtype=f64)
        assert objective(Q, H, prev, delta) >= best
        pert = torch.linalg.qr(P + 1e-3 * torch.randn(d, K, generator=g, dtype=f64)).Q
        assert objective(pert, H, prev, delta) >= best - 1e-12


def test_scipy_procrustes_on_square_problem():
    H, prev = problem(6, 6)
    A = procrustes_target(H, prev, 1e-3).numpy()
    R, _ = orthogonal_procrustes(np.eye(6), A)
    assert np.abs(nearest_etf(H, prev).numpy() - R).max() < 1e-10


def test_result_is_a_simplex_etf_and_centring_is_internal():
    H, prev = problem(30, 6)
    shifted = H + torch.randn(30, 1, dtype=f64)  # adding a vector to every class mean changes nothing
    P = nearest_etf(H, prev)
    assert torch.allclose(P, nearest_etf(shifted, prev), atol=1e-12)
    W = simplex_etf(P)
    assert torch.allclose(W @ W.T, math.sqrt(6 / 5) ** 2 * centring_matrix(6, dtype=f64), atol=1e-12)


@pytest.mark.parametrize("method", ["gram", "riemannian"])
def test_other_methods_reach_the_closed_form(method):
    H, prev = problem(40, 8)
    P = nearest_etf(H, prev)
    Q, info = nearest_etf(H, prev, method=method, return_info=True)
    assert (Q - P).abs().max() <= 1e-5
    if method == "riemannian":
        assert 0 < int(info.iters) < 100
        assert float(info.grad_norm) < 1e-9


@pytest.mark.parametrize("d,K", [(12, 3), (40, 8), (64, 16)])
def test_riemannian_from_cold_and_warm_starts(d, K):
    H, prev = problem(d, K, seed=2)
    P = nearest_etf(H, prev)
    cold = random_stiefel(d, K, generator=torch.Generator().manual_seed(11), dtype=f64)
    for init in (cold, canonical_stiefel(d, K, dtype=f64), torch.linalg.qr(P + 0.01).Q):
        Q = nearest_etf(H, prev, method="riemannian", init=init, max_iters=200)
        assert (Q - P).abs().max() <= 1e-5


def test_riemannian_batched_reports_per_problem():
    H, prev = problem(20, 5, batch=(3,))
    Q, info = nearest_etf(H, prev, method="riemannian", return_info=True)
    assert info.iters.shape == (3,) and info.grad_norm.shape == (3,)
    assert (Q - nearest_etf(H, prev)).abs().max() <= 1e-5


# --- backward -----------------------------------------------------------------------------------


def _fn(backward, method="svd"):
    return lambda H, prev: nearest_etf(H, prev, backward=backward, method=method, check=False)


@pytest.mark.parametrize("backward", ["polar", "ddn"])
def test_gradcheck(backward):
    H, prev = problem(6, 3)
    assert torch.autograd.gradcheck(_fn(backward), (H.requires_grad_(), prev.requires_grad_()))


def test_gradcheck_polar_batched_and_through_riemannian_solution():
    H, prev = problem(5, 3, batch=(2,))
    assert torch.autograd.gradcheck(_fn("polar"), (H.requires_grad_(), prev.requires_grad_()))
    H, prev = problem(6, 3, seed=4)
    opts = dict(backward="polar", method="riemannian", check=False)
    assert torch.autograd.gradcheck(lambda h: nearest_etf(h, prev, **opts), (H.requires_grad_(),))


@pytest.mark.parametrize("d,K", [(8, 4), (15, 6)])
def test_polar_equals_ddn(d, K):
    H, prev = problem(d, K, seed=5)
    H.requires_grad_(), prev.requires_grad_()
    G = torch.randn(d, K, dtype=f64, generator=torch.Generator().manual_seed(9))
    g_polar = torch.autograd.grad((_fn("polar")(H, prev) * G).sum(), (H, prev))
    g_ddn = torch.autograd.grad((_fn("ddn")(H, prev) * G).sum(), (H, prev))
    for a, b in zip(g_polar, g_ddn):
        assert (a - b).abs().max() <= 1e-8


@pytest.mark.parametrize("method", ["svd", "gram"])
@pytest.mark.parametrize("d,K", [(512, 10), (512, 100)])
def test_float32_polar_close_to_float64(d, K, method):
    """float32 P and dL/dH within 10 eps_32 cond(A) of float64, where the smallest singular value of A is ~ delta."""
    H, prev = problem(d, K, seed=6)
    S = torch.linalg.svdvals(procrustes_target(H, prev, 1e-3))
    assert S[-1] < 10 * 1e-3  # the ill-conditioned direction P 1, pinned only by delta P_prev
    tol = 10 * torch.finfo(torch.float32).eps * float(S[0] / S[-1])
    G = torch.randn(d, K, dtype=f64, generator=torch.Generator().manual_seed(1))
    grads = []
    for dt in (f64, torch.float32):
        h = H.to(dt).requires_grad_()
        P = nearest_etf(h, prev.to(dt), method=method)
        (gH,) = torch.autograd.grad((P * G.to(dt)).sum(), h)
        grads.append((P.double(), gH.double()))
    (P64, g64), (P32, g32) = grads
    assert (P32 - P64).norm() / P64.norm() < tol
    assert (g32 - g64).norm() / g64.norm() < tol


def test_backward_none_is_constant_and_gram_has_same_gradient():
    H, prev = problem(10, 4)
    H.requires_grad_()
    assert not nearest_etf(H, prev, backward="none").requires_grad
    G = torch.randn(10, 4, dtype=f64)
    a = torch.autograd.grad((nearest_etf(H, prev) * G).sum(), H)[0]
    b = torch.autograd.grad((nearest_etf(H, prev, method="gram") * G).sum(), H)[0]
    assert (a - b).abs().max() < 1e-8


# --- batching, dtype, errors --------------------------------------------------------------------


def test_batched_equals_loop_of_single_calls():
    H, prev = problem(12, 4, batch=(2, 3))
    H.requires_grad_()
    P = nearest_etf(H, prev)
    (gB,) = torch.autograd.grad(P.square().mul(torch.arange(4.0, dtype=f64)).sum(), H)
    for i in range(2):
        for j in range(3):
            h = H[i, j].detach().requires_grad_()
            p = nearest_etf(h, prev[i, j])
            assert torch.allclose(p, P[i, j], atol=1e-12)
            (g,) = torch.autograd.grad(p.square().mul(torch.arange(4.0, dtype=f64)).sum(), h)
            assert torch.allclose(g, gB[i, j], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_is_preserved(dtype):
    H, prev = problem(16, 4)
    P = nearest_etf(H.to(dtype), prev.to(dtype), check=False)
    assert P.dtype == dtype
    assert (P.double() - nearest_etf(H, prev)).abs().max() < 3e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["svd", "gram", "riemannian"])
def test_cuda_matches_cpu(method):
    H, prev = problem(64, 10, batch=(2,))
    Hc = H.cuda().requires_grad_()
    P = nearest_etf(Hc, prev.cuda(), method=method)
    assert P.device.type == "cuda"
    P.sum().backward()
    assert (P.cpu() - nearest_etf(H, prev)).abs().max() < 1e-5


def test_bad_inputs():
    H, prev = problem(10, 4)
    with pytest.raises(EtfTrainError, match="d=3 is smaller than the number of classes K=4"):
        nearest_etf(H[:3], prev[:3])
    with pytest.raises(EtfTrainError, match="K >= 2"):
        nearest_etf(H[:, :1], prev[:, :1])
    with pytest.raises(EtfTrainError, match="same shape"):
        nearest_etf(H, prev[:, :3])
    with pytest.raises(EtfTrainError, match="not on St"):
        nearest_etf(H, prev * 1.1)
    bad = H.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(EtfTrainError, match="non-finite"):
        nearest_etf(bad, prev)
    with pytest.raises(EtfTrainError, match="unknown method"):
        nearest_etf(H, prev, method="lanczos")
    with pytest.raises(EtfTrainError, match="unknown backward"):
        nearest_etf(H, prev, backward="autograd")
    assert issubclass(EtfTrainError, ValueError)


# --- independent re-computations (mutation gaps) -------------------------------------------------


def _np_problem(shape, d, K, seed):
    """Random class means H and Stiefel points prev (QR of Gaussians), in numpy float64.  (*shape, d, K) each"""
    rng = np.random.default_rng(seed)
    H = rng.standard_normal((*shape, d, K))
    Q, R = np.linalg.qr(rng.standard_normal((*shape, d, K)))
    return H, Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[..., None, :]


def _target_by_hand(H, prev, delta):
    """A = (2/sqrt(K-1)) H M + delta P_prev with M = I - 11^T/K formed explicitly (torch.eye(K) - 1/K)."""
    K = H.shape[-1]
    M = (torch.eye(K, dtype=f64) - 1.0 / K).numpy()
    return (2.0 / math.sqrt(K - 1)) * H @ M + delta * prev


def _np_polar(A):
    U, _, Vt = np.linalg.svd(A, full_matrices=False)
    return U @ Vt


@pytest.mark.parametrize("d,K", [(2, 2), (5, 2), (4, 4), (9, 4), (20, 7)])
@pytest.mark.parametrize("delta", [1e-3, 0.3])
def test_forward_equals_numpy_polar_of_hand_built_target(d, K, delta):
    """Catches a wrong target A (factor 2/sqrt(K-1), missing centring M, delta vs delta/2, dropped prev) or P = V U^T / U alone."""
    H, prev = _np_problem((), d, K, seed=d * 100 + K)
    P = nearest_etf(torch.from_numpy(H), torch.from_numpy(prev), delta)
    assert P.dtype == f64
    assert np.abs(P.numpy() - _np_polar(_target_by_hand(H, prev, delta))).max() < 1e-9


def test_batched_forward_equals_numpy_polar_per_problem():
    """Catches batching bugs: reductions or transposes over the wrong axis of a (..., d, K) input, or problems mixed across the batch."""
    d, K, delta = 8, 4, 1e-2
    H, prev = _np_problem((2, 3), d, K, seed=17)
    P = nearest_etf(torch.from_numpy(H), torch.from_numpy(prev), delta).numpy()
    assert P.shape == (2, 3, d, K)
    for i in range(2):
        for j in range(3):
            ref = _np_polar(_target_by_hand(H[i, j], prev[i, j], delta))
            assert np.abs(P[i, j] - ref).max() < 1e-9, (i, j)


@pytest.mark.parametrize("d,K", [(2, 2), (3, 3), (6, 6), (7, 3), (16, 5)])
def test_forward_equals_scipy_orthogonal_procrustes(d, K):
    """Catches a forward that is not the polar factor of A: checked against scipy's Procrustes solver, not an SVD we wrote."""
    delta = 1e-3
    H, prev = _np_problem((), d, K, seed=31 + d + K)
    A = _target_by_hand(H, prev, delta)
    if d == K:
        # polar(A) = argmax_{R orthogonal} tr(R^T A) = argmin ||I R - A||_F
        ref, _ = orthogonal_procrustes(np.eye(K), A)
    else:
        # A = Q Rq (Q: orthonormal basis of range(A)); polar(A) = Q polar(Q^T A) and polar(Q^T A) = argmin ||Q R - A||_F
        Q, _ = np.linalg.qr(A)
        R, _ = orthogonal_procrustes(Q, A)
        ref = Q @ R
    assert np.abs(ref.T @ ref - np.eye(K)).max() < 1e-12
    P = nearest_etf(torch.from_numpy(H), torch.from_numpy(prev), delta).numpy()
    assert np.abs(P - ref).max() < 1e-9


def _objective_by_hand(P, H, prev, delta):
    K = P.shape[-1]
    M = torch.eye(K, dtype=f64) - 1.0 / K
    return ((H - P @ M / math.sqrt(K - 1)) ** 2).sum() + 0.5 * delta * ((P - prev) ** 2).sum()


@pytest.mark.parametrize("d,K,delta", [(6, 3, 1e-3), (12, 5, 1e-3), (5, 5, 0.2), (10, 2, 0.05)])
def test_solution_is_a_local_minimiser_along_tangent_retractions(d, K, delta):
    """Catches a forward that is only near the optimum (e.g. delta/2 in A, a missing centring) or a maximiser/saddle: some retraction would decrease the objective."""
    H, prev = (torch.from_numpy(x) for x in _np_problem((), d, K, seed=7 * d + K))
    H = H / H.norm()
    P = nearest_etf(H, prev, delta)
    best = _objective_by_hand(P, H, prev, delta)
    g = torch.Generator().manual_seed(d + K)
    for _ in range(16):
        Z = torch.randn(d, K, generator=g, dtype=f64)
        PtZ = P.T @ Z
        xi = Z - P @ (PtZ + PtZ.T) / 2  # tangent at P: P^T xi is skew
        xi = xi / xi.norm()
        for t in (1e-1, 1e-3, 1e-6):
            for s in (1.0, -1.0):
                Q, R = torch.linalg.qr(P + s * t * xi)
                Q = Q * torch.sign(torch.diagonal(R))  # the retraction qf(P + t xi)
                assert _objective_by_hand(Q, H, prev, delta) >= best - 1e-12, (t, s)


# --- the small-K fast path: centring, layouts, partial gradients, the VJP formula ------------------


@pytest.mark.parametrize("K", [3, CENTRE_BY_PRODUCT_MAX_K, CENTRE_BY_PRODUCT_MAX_K + 1])
def test_centre_equals_explicit_centring_product_on_both_routes(K):
    """Catches a wrong scale, centring over the wrong axis or a batching slip in either route of centre (product / mean)."""
    X = torch.randn(2, K, 7, dtype=f64, generator=torch.Generator().manual_seed(K))
    M = torch.eye(K, dtype=f64) - 1.0 / K
    assert torch.allclose(centre(X, 0.7), 0.7 * M @ X, atol=1e-13)
    assert torch.allclose(centre(X.mT.contiguous().mT, 0.7), 0.7 * M @ X, atol=1e-13)  # column-major input


def test_polar_vjp_equals_method_md_formula_written_out():
    """Catches a slip in the expanded, transposed VJP (s_i vs s_j, a sign, the scale c M): method.md's form, from numpy's SVD."""
    d, K, c = 30, 6, 0.8
    H, prev = _np_problem((), d, K, seed=3)
    A = _target_by_hand(H, prev, 1e-3)
    G = np.random.default_rng(4).standard_normal((d, K))
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    V = Vt.T
    Y = U.T @ G @ V
    dA = U @ ((Y - Y.T) / (s[:, None] + s[None, :])) @ Vt + (np.eye(d) - U @ U.T) @ G @ V @ np.diag(1 / s) @ Vt
    M = np.eye(K) - 1.0 / K
    factors = [torch.from_numpy(x) for x in (G, U, s, Vt)]
    assert np.abs(polar_vjp(*factors).numpy() - dA).max() < 1e-10
    assert np.abs(polar_vjp(*factors, scale=c).numpy() - c * dA @ M).max() < 1e-10


def test_input_layouts_and_partial_gradients_agree():
    """Catches results that depend on the memory layout of H, prev or the upstream gradient (the solver computes transposed),
    and gradients that change when only one of H, prev requires grad."""
    H, prev = problem(40, 7, seed=8)
    G = torch.randn(40, 7, dtype=f64, generator=torch.Generator().manual_seed(2))
    col = lambda t: t.mT.contiguous().mT  # noqa: E731
    results = []
    for h0, p0, g in ((H, prev, G), (col(H), col(prev), col(G))):
        h, p = h0.clone().requires_grad_(), p0.clone().requires_grad_()
        P = nearest_etf(h, p)
        results.append((P, *torch.autograd.grad((P * g).sum(), (h, p))))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-12)
    _, gH, gprev = results[0]
    h = H.clone().requires_grad_()
    assert torch.allclose(torch.autograd.grad((nearest_etf(h, prev) * G).sum(), h)[0], gH, atol=1e-12)
    p = prev.clone().requires_grad_()
    assert torch.allclose(torch.autograd.grad((nearest_etf(H, p) * G).sum(), p)[0], gprev, atol=1e-12)


def test_first_call_under_inference_mode_leaves_a_usable_cache():
    """Catches a cached centring matrix created as an inference tensor, which autograd could not save later."""
    H, prev = problem(20, 11, seed=9)  # K = 11: not used elsewhere in this file, so the cache starts empty
    with torch.inference_mode():
        P0 = nearest_etf(H, prev)
    h = H.clone().requires_grad_()
    P = nearest_etf(h, prev)
    assert torch.allclose(P, P0, atol=1e-12)
    (g,) = torch.autograd.grad(procrustes_target(h, prev, 1e-3).sum(), h)  # saves the cached matrix for backward
    assert torch.isfinite(g).all()


# --- solver=newton: the polar factor without a host synchronisation -------------------------------


def _closed_form(H, prev, delta=1e-3):
    """polar(A) of A = (2/sqrt(K-1)) H M + delta prev by numpy's SVD in float64, written out here."""
    K = H.shape[-1]
    M = np.eye(K) - np.ones((K, K)) / K
    A = 2 / math.sqrt(K - 1) * H.double().numpy() @ M + delta * prev.double().numpy()
    U, _, Vt = np.linalg.svd(A, full_matrices=False)
    return torch.from_numpy(U @ Vt)


@pytest.mark.parametrize(("d", "K"), [(64, 10), (512, 100)])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_newton_reaches_the_closed_form_in_its_default_iterations(d, K, dtype, tol):
    """Catches a wrong scaling or update (no convergence within the default count) and a float32 Gram matrix."""
    H, prev = problem(d, K, seed=2)
    P = nearest_etf(H.to(dtype), prev.to(dtype), method="newton", check=False)
    assert P.dtype == dtype
    assert (P.double() - _closed_form(H, prev)).abs().max() < tol


def test_newton_gradients_equal_the_closed_form_polar_backward():
    """Autograd through the iterations against the closed-form VJP (the svd route), into H and prev, batched."""
    H, prev = problem(40, 6, batch=(3,), seed=4)
    G = torch.randn(3, 40, 6, generator=torch.Generator().manual_seed(1), dtype=f64)
    grads = {}
    for method in ("svd", "newton"):
        Hg, pg = H.clone().requires_grad_(), prev.clone().requires_grad_()
        (nearest_etf(Hg, pg, method=method, check=False) * G).sum().backward()
        grads[method] = (Hg.grad, pg.grad)
    for new, ref in zip(grads["newton"], grads["svd"]):
        assert (new - ref).abs().max() < 1e-10 * ref.abs().max()


SYNCING_OPS = (
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::is_nonzero",
    "aten::_linalg_svd",
    "aten::_linalg_eigh",
    "aten::_linalg_check_errors",
    "aten::linalg_cholesky",
    "aten::cholesky_inverse",
)


@pytest.mark.parametrize("method", ["svd", "newton"])
def test_only_newton_is_free_of_operations_that_wait_for_the_host(method):
    """The profiler's list of operations in forward + backward: the ones that read a value on the host on a GPU
    (item, nonzero, the error-checking SVD, eigh and Cholesky) appear for svd, never for newton."""
    H, prev = problem(32, 5)
    Hg = H.clone().requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        nearest_etf(Hg, prev, method=method, check=False).sum().backward()
    found = {e.name for e in prof.events()} & set(SYNCING_OPS)
    assert bool(found) == (method == "svd"), found


def test_newton_options_are_checked():
    H, prev = problem(16, 4)
    assert (nearest_etf(H, prev, method="newton", iters=2) - _closed_form(H, prev)).abs().max() > 1e-6  # too few
    from etf_train import NearestETFHead

    with pytest.raises(EtfTrainError, match="head.solver.iters"):
        NearestETFHead(4, 16, solver={"name": "newton", "iters": 0})
    with pytest.raises(EtfTrainError, match="head.solver.max_iters does not apply to solver=newton"):
        NearestETFHead(4, 16, solver={"name": "newton", "max_iters": 3})
