"""GPU check, step `solver` (run by gpu_steps.py): the nearest-ETF solve on the device against bare factorisations.

Per size (d, K), float32, the same A = procrustes_target(H, prev, 1e-3): one bare torch.linalg.svd of A with each
CUDA driver torch offers (default, gesvd, gesvdj, gesvda), the float64 eigh of the Gram matrix A^T A (the core of
solver=gram), and nearest_etf forward + backward of <P, G> into H with svd, gram, newton and riemannian (30 iterations,
K <= 100); the Riemannian forward with the dense declarative backward (our analogue of the authors' layer:
trust-region forward, dense DDN backward; not their code) where its dense system fits. Times are CUDA events over
back-to-back calls after warm-up calls. Accuracy: P and dL/dH in float32 on the device against float64 on the CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solver import Case, make_inputs  # noqa: E402
from gpu_steps import Step  # noqa: E402

from etf_train.solver import nearest_etf, procrustes_target  # noqa: E402

DELTA = 1e-3
SIZES = ((512, 10), (512, 100), (2048, 1000))
DRY_SIZES = ((64, 10), (128, 20))
DDN_MAX_DK = 5120  # our dense DDN backward solves a (dK)^2 float64 system: 210 MB at (512, 10)


def time_ms(fn, device: str, budget_s: float = 0.3, most: int = 100) -> tuple[float, int]:
    """Mean ms per call of fn over back-to-back calls (CUDA events on a GPU), after two warm-up calls; as many calls
    as fit budget_s, at least 3.  -> (ms, calls)"""
    cuda = device == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    once = time.perf_counter() - start
    n = max(3, min(most, int(budget_s / max(once, 1e-6))))
    if cuda:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / n, n
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return 1e3 * (time.perf_counter() - start) / n, n


def fwd_bwd(H, prev, G, method: str, backward: str = "polar", **opts):
    Hg = H.clone().requires_grad_()

    def call():
        Hg.grad = None
        P = nearest_etf(Hg, prev, DELTA, method, backward, check=False, **opts)
        (P * G).sum().backward()
        return P, Hg.grad

    return call


def contenders(H, prev, G, A, device: str) -> dict:
    d, K = A.shape
    out = {"bare svd (default driver)": lambda: torch.linalg.svd(A, full_matrices=False)}
    if device == "cuda":
        for driver in ("gesvd", "gesvdj", "gesvda"):
            out[f"bare svd ({driver})"] = lambda driver=driver: torch.linalg.svd(A, full_matrices=False, driver=driver)
    A64 = A.double()
    out["bare eigh of A^T A (float64)"] = lambda: torch.linalg.eigh(A64.mT @ A64)
    out["nearest_etf svd fwd+bwd"] = fwd_bwd(H, prev, G, "svd")
    out["nearest_etf gram fwd+bwd"] = fwd_bwd(H, prev, G, "gram")
    out["nearest_etf newton fwd+bwd"] = fwd_bwd(H, prev, G, "newton")
    if K <= 100:
        out["nearest_etf riemannian(30) fwd+bwd"] = fwd_bwd(H, prev, G, "riemannian", max_iters=30)
    if d * K <= DDN_MAX_DK:
        out["riemannian(30) + dense ddn fwd+bwd (authors' layer analogue)"] = fwd_bwd(
            H, prev, G, "riemannian", "ddn", max_iters=30
        )
    return out


def accuracy(H, prev, G, method: str) -> tuple[float, float]:
    """max |P - P64| and max |dH - dH64| / max |dH64|: the device's float32 against float64 on the CPU."""
    P, dH = fwd_bwd(H, prev, G, method)()
    P64, dH64 = fwd_bwd(H.double().cpu(), prev.double().cpu(), G.double().cpu(), "svd")()
    return float((P.double().cpu() - P64).abs().max()), float((dH.double().cpu() - dH64).abs().max() / dH64.abs().max())


def solver(step: Step) -> None:
    rows = ["| (d, K) | contender | ms | calls | / bare svd (default) |", "|---|---|---:|---:|---:|"]
    acc_rows = ["| (d, K) | method | max abs err P (float32 vs float64) | rel. err dL/dH |", "|---|---|---:|---:|"]
    tables = lambda: rows + [""] + acc_rows  # noqa: E731
    for d, K in DRY_SIZES if step.dry else SIZES:
        H, prev, G = make_inputs(Case(None, d, K), torch.device(step.device))
        A = procrustes_target(H, prev, DELTA).contiguous()
        base = None
        for name, fn in contenders(H, prev, G, A, step.device).items():

            def case(name=name, fn=fn):
                nonlocal base
                ms, n = time_ms(fn, step.device)
                base = ms if base is None else base
                rows.append(f"| ({d}, {K}) | {name} | {ms:.3f} | {n} | {ms / base:.2f} |")
                step.data[f"({d}, {K}) {name}"] = ms
                if K >= 100 and name.startswith("nearest_etf") and "riemannian" not in name:
                    step.goal(f"({d}, {K}) {name} <= 3x one bare svd", ms <= 3 * base, f"{ms / base:.2f}x")
                return True, f"{ms:.3f} ms"

            if not step.attempt(f"({d}, {K}) {name}", case, tables):
                rows.append(f"| ({d}, {K}) | {name} | failed: {step.checks[-1]['detail']} | | |")
        if d * K > DDN_MAX_DK:
            dk = d * K
            rows.append(
                f"| ({d}, {K}) | authors' layer analogue | not run: its dense system needs (dK)^2 x 8 B = "
                f"{dk * dk * 8 / 1e9:,.0f} GB (the authors' K(K+1)/2 x K^2 constraint matrix: "
                f"{K * (K + 1) / 2 * K * K * 4 / 1e9:,.1f} GB in float32) | | |"
            )
        if K <= 100:
            for method in ("svd", "gram", "newton"):

                def case(method=method):
                    errP, errG = accuracy(H, prev, G, method)
                    acc_rows.append(f"| ({d}, {K}) | {method} | {errP:.2e} | {errG:.2e} |")
                    return errP < 1e-3 and errG < 1e-2, f"P {errP:.1e}, grad {errG:.1e}"

                step.attempt(f"({d}, {K}) {method} float32 vs float64", case, tables)
    step.summary = tables()
