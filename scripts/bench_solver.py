"""Benchmark the nearest-ETF solver against one bare thin SVD of the same matrix.

For each size, method (svd, gram, riemannian with max_iters=30) and backward (polar, ddn, none):
the median wall time of the forward (graph built, H.requires_grad) and of forward + backward of
<P, G> for a fixed random G, next to one ``torch.linalg.svd(A, full_matrices=False)`` of the same
A = procrustes_target(H, prev, delta), and the ratio fwd+bwd / bare SVD. float32, check=False.

Timing rule: one discarded warm-up call, then min(--repeats, max(1, floor(--budget-s / warm-up time)))
timed calls, so a call slower than the budget (the riemannian solver at 2048 x 1000 on CPU) is timed once.
``ddn`` is dense (a (dK)^2 float64 system) and only runs where d*K <= 5000.

    python scripts/bench_solver.py                      # every available device
    python scripts/bench_solver.py --device cpu --out /tmp/solver.md
    python scripts/bench_solver.py --quick              # small sizes, 2 repeats: a smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from etf_train.etf import random_stiefel
from etf_train.solver import BACKWARDS, METHODS, nearest_etf, procrustes_target

DELTA = 1e-3
DDN_MAX_DK = 5000  # ddn_vjp solves a dense (dK x dK) float64 system: 5000^2 * 8 B = 200 MB
SOLVER_OPTS = {"svd": {}, "gram": {}, "riemannian": {"max_iters": 30}}


@dataclass(frozen=True)
class Case:
    batch: int | None
    d: int
    K: int

    @property
    def label(self) -> str:
        return f"({self.d}, {self.K})" if self.batch is None else f"{self.batch} x ({self.d}, {self.K})"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.d, self.K) if self.batch is None else (self.batch, self.d, self.K)


FULL_CASES = (Case(None, 64, 10), Case(None, 512, 10), Case(None, 512, 100), Case(None, 2048, 1000), Case(64, 512, 10))
QUICK_CASES = (Case(None, 64, 10), Case(None, 512, 10), Case(None, 512, 100), Case(8, 512, 10))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, budget_s: float) -> tuple[float, int]:
    """Median milliseconds of ``fn`` after one warm-up call, and how many calls were timed."""

    def once() -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    warm = once()
    n = min(repeats, max(1, math.floor(budget_s / max(warm, 1e-9))))
    return 1e3 * statistics.median(once() for _ in range(n)), n


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory allocated by ``fn`` above what was live before it (CUDA only; None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def make_inputs(case: Case, device: torch.device, seed: int = 0):
    """H (random, unit Frobenius norm per matrix), prev (Haar-random on St(d, K)), G (upstream gradient)."""
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(case.shape, generator=gen)
    H = H / H.flatten(-2).norm(dim=-1)[..., None, None]
    prev = torch.stack([random_stiefel(case.d, case.K, generator=gen) for _ in range(case.batch or 1)])
    prev = prev.reshape(case.shape)
    G = torch.randn(case.shape, generator=gen)
    return H.to(device), prev.to(device), G.to(device)


def fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def fmt_bytes(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    power = min(int(math.log10(max(n, 1)) // 3), len(units) - 1)
    return f"{n / 1000**power:.3g} {units[power]}"


def solver_calls(H, prev, G, method: str, backward: str, opts: dict):
    """The two timed calls: the forward (graph built) and forward + backward of <P, G> into H."""
    Hg = H.clone().requires_grad_()

    def forward():
        return nearest_etf(Hg, prev, DELTA, method, backward, check=False, **opts)

    def forward_backward():
        Hg.grad = None
        P = forward()
        if P.requires_grad:  # backward="none" builds no graph: P is a constant
            (P * G).sum().backward()

    return forward, forward_backward


def bench_case(case: Case, device: torch.device, args, bar: tqdm) -> list[list[str]]:
    H, prev, G = make_inputs(case, device)
    A = procrustes_target(H, prev, DELTA)
    svd_ms, svd_n = time_ms(lambda: torch.linalg.svd(A, full_matrices=False), device, args.repeats, args.budget_s)
    bar.write(f"[{device.type}] {case.label}: bare SVD {fmt_ms(svd_ms)} ms (n={svd_n})")
    rows = []
    for method in METHODS:
        opts = SOLVER_OPTS[method]
        for backward in BACKWARDS:
            row = [device.type, case.label, method, backward]
            if backward == "ddn" and case.d * case.K > DDN_MAX_DK:
                rows.append(row + ["skipped (dense, O((dK)^2) memory)", "—", fmt_ms(svd_ms), "—", "—", "—"])
                bar.write(" | ".join(rows[-1]))
                bar.update()
                continue
            forward, forward_backward = solver_calls(H, prev, G, method, backward, opts)
            fwd_ms, n_fwd = time_ms(forward, device, args.repeats, args.budget_s)
            if backward == "none":
                both_ms, n_both, both = fwd_ms, n_fwd, f"{fmt_ms(fwd_ms)} (= fwd)"
            else:
                both_ms, n_both = time_ms(forward_backward, device, args.repeats, args.budget_s)
                both = fmt_ms(both_ms)
            mem = peak_extra_bytes(forward_backward, device)
            rows.append(
                row
                + [
                    fmt_ms(fwd_ms),
                    both,
                    fmt_ms(svd_ms),
                    f"{both_ms / svd_ms:.2f}",
                    f"{n_fwd}/{n_both}",
                    "n/a (CPU)" if mem is None else fmt_bytes(mem),
                ]
            )
            bar.write(" | ".join(rows[-1]))
            bar.update()
    return rows


HEADER = ["device", "size (d, K)", "method", "backward", "fwd ms", "fwd+bwd ms", "bare SVD ms", "fwd+bwd / SVD", "n fwd/bwd", "peak extra mem"]


def _drop_memory_on_cpu(header, rows, devices):
    """The peak-memory column is measured on CUDA only: leave it out of CPU-only reports."""
    if any(dev.type == "cuda" for dev in devices):
        return header, rows
    return header[:-1], [r[:-1] for r in rows]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def memory_rows() -> list[list[str]]:
    """Computed, not measured: the authors' dense DDN constraint matrix vs our polar backward's saved state."""
    rows = []
    for d, K in ((512, 100), (2048, 1000)):
        dense = K * (K + 1) // 2 * K * K * 4  # K(K+1)/2 x K^2 float32
        ours = (d * K + K + K * K) * 4  # U (d, K), S (K,), Vh (K, K) float32: O(dK) since d >= K
        ddn_check = (d * K) ** 2 * 8  # our ddn cross-check: the (dK x dK) float64 Hessian
        rows.append([f"({d}, {K})", fmt_bytes(dense), fmt_bytes(ours), fmt_bytes(ddn_check)])
    return rows


MEMORY_HEADER = [
    "size (d, K)",
    "authors' DDN constraint matrix, K(K+1)/2 x K^2 fp32",
    "ours, polar backward saved state (dK + K + K^2) fp32",
    "ours, ddn cross-check Hessian (dK)^2 fp64",
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines(devices: list[torch.device]) -> list[str]:
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- command: `python {' '.join(sys.argv)}`",
    ]
    for dev in devices:
        if dev.type == "cuda":
            lines.append(f"- CUDA: {torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda}")
    if not any(dev.type == "cuda" for dev in devices):
        lines.append("- CUDA: not measured (no CUDA device on this machine)")
    return lines


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="all = cpu and cuda if available")
    parser.add_argument("--repeats", type=int, default=10, help="most timed calls per median (default 10)")
    parser.add_argument("--budget-s", type=float, default=3.0, help="time per median; slower calls are timed fewer times")
    parser.add_argument("--out", type=Path, help="write the tables as markdown here")
    parser.add_argument("--threads", type=int, help="torch intra-op CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 repeats: a smoke run")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    if args.quick:
        args.repeats, args.budget_s = min(args.repeats, 2), min(args.budget_s, 0.5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    cases = QUICK_CASES if args.quick else FULL_CASES
    load_before = loadavg()
    rows: list[list[str]] = []
    with tqdm(total=len(devices) * len(cases) * len(METHODS) * len(BACKWARDS), desc="solver bench", file=sys.stderr) as bar:
        for device in devices:
            for case in cases:
                rows += bench_case(case, device, args, bar)
    load_after = loadavg()

    mem = markdown_table(MEMORY_HEADER, memory_rows())
    report = "\n".join(
        [
            *machine_lines(devices),
            f"- load average (1, 5, 15 min): before {load_before}, after {load_after}",
            "",
            markdown_table(*_drop_memory_on_cpu(HEADER, rows, devices)),
            "",
            "Backward-pass memory, computed (not measured):",
            "",
            mem,
            "",
        ]
    )
    print("\n" + report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
