"""The Riemannian trust-region with its stopping tests on the host (early exit: the CPU path) and on the device
(fixed counts, masks: the GPU path), side by side: distance to the closed form, time, and the operations that read
a value on the host (the profiler's list). Warm starts, as in training: the start is the solution of a nearby problem.

    OMP_NUM_THREADS=1 python scripts/bench_riemannian_stop.py [--out table.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_data import emit, machine

from etf_train.solver import procrustes_target, riemannian_trust_region
from etf_train.solver.riemannian import FIXED_INNER

HOST_READS = {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero"}


def warm_problem(d: int, K: int, dtype: torch.dtype, seed: int = 0):
    """(A, start, closed form): the start solves the problem of H moved by 5 %."""
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(d, K, generator=g, dtype=torch.float64)
    prev = torch.linalg.qr(torch.randn(d, K, generator=g, dtype=torch.float64))[0]

    def closed_form(A):
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        return U @ Vh

    start = closed_form(procrustes_target(H + 0.05 * torch.randn(d, K, generator=g, dtype=H.dtype), prev, 1e-3))
    A = procrustes_target(H, start, 1e-3)
    return A.to(dtype), start.to(dtype), closed_form(A)


def measure(A, start, exact, early_exit: bool, repeats: int) -> tuple[float, float, int]:
    """(max |P - closed form|, median ms, host reads in one solve)."""
    solve = lambda: riemannian_trust_region(A, start, max_iters=30, early_exit=early_exit)[0]  # noqa: E731
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        P = solve()
    reads = sum(1 for e in prof.events() if e.name in HOST_READS)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        solve()
        times.append(1e3 * (time.perf_counter() - t))
    return float((P.double() - exact).abs().max()), statistics.median(times), reads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    lines = [
        f"| (d, K) | dtype | early exit: error, ms, host reads | fixed counts (30 x {FIXED_INNER}): error, ms, host reads |",
        "|---|---|---|---|",
    ]
    for d, K in ((128, 10), (512, 10), (128, 100), (512, 100)):
        for dtype in (torch.float32, torch.float64):
            A, start, exact = warm_problem(d, K, dtype)
            cells = []
            for early_exit in (True, False):
                err, ms, reads = measure(A, start, exact, early_exit, args.repeats)
                cells.append(f"{err:.1e}, {ms:.1f}, {reads}")
            lines.append(f"| ({d}, {K}) | {str(dtype)[6:]} | {cells[0]} | {cells[1]} |")
    lines.append(f"\n{machine()}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
