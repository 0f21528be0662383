"""Benchmark the nearest-ETF solver against one bare thin SVD of the same matrix.

For each size, method (svd, gram, riemannian with max_iters=30) and backward (polar, ddn, none):
the median wall time of the forward (graph built, H.requires_grad) and of forward + backward of
<P, G> for a fixed random G, next to one ``torch.linalg.svd(A, full_matrices=False)`` of the same
A = procrustes_target(H, prev, delta) stored row-major, and the ratio fwd+bwd / bare SVD. float32, check=False.

Timing rule: the bare SVD, the forward and the forward + backward are timed side by side, one after another in each
of min(--repeats, max(1, floor(--budget-s / warm-up round))) rounds after a discarded warm-up round, so a call slower
than the budget (the riemannian solver at 2048 x 1000 on CPU) is timed once; times are medians over rounds and the
ratio is the median of the per-round ratios.
``ddn`` is dense (a (dK)^2 float64 system) and only runs where d*K <= 5000.

``--summary`` instead times, side by side in interleaved rounds (every contender once per round, so a change of
load hits all alike): svd + polar forward+backward against the bare SVD of A row-major and column-major (LAPACK's
layout: torch copies a row-major A first) at (512, 10), (512, 100), (2048, 1000); and one training step of the
heads at UFM-10 sizes (B=256, d=512, K=10: head forward, cross-entropy, backward into the features), nearest_etf
against learned (at least 3 rounds, at most --rounds). ``--before DIR`` adds the same contenders from an older
checkout of the package, e.g. ``git archive <rev> etf_train | tar -x -C DIR``.

    python scripts/bench_solver.py                      # every available device
    python scripts/bench_solver.py --device cpu --out /tmp/solver.md
    python scripts/bench_solver.py --quick              # small sizes, 2 repeats: a smoke run
    python scripts/bench_solver.py --device cpu --threads 1 --summary --before /tmp/old
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
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
import torch.nn.functional as F
from tqdm import tqdm

from etf_train import heads
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
SUMMARY_CASES = (Case(None, 512, 10), Case(None, 512, 100), Case(None, 2048, 1000))
HEAD_SIZE = (256, 512, 10)  # UFM-10: batch B, feature dim d, classes K


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, budget_s: float, min_rounds: int
):
    """Milliseconds of every fn in every round, the fns timed one after another within a round (so a change of load
    hits all of them alike). One warm-up round, then min(rounds, max(min_rounds, floor(budget_s / warm-up round)))
    rounds.  -> {name: [ms per round]}
    """

    def once(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return 1e3 * (time.perf_counter() - start)

    warm = sum(once(fn) for fn in fns.values()) / 1e3
    n = min(rounds, max(min_rounds, math.floor(budget_s / max(warm, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            times[name].append(once(fn))
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a / b, each ratio measured side by side within one round."""
    return statistics.median(x / y for x, y in zip(a, b))


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


def solver_calls(H, prev, G, method: str, backward: str, opts: dict, solve=nearest_etf):
    """The two timed calls: the forward (graph built) and forward + backward of <P, G> into H."""
    Hg = H.clone().requires_grad_()

    def forward():
        return solve(Hg, prev, DELTA, method, backward, check=False, **opts)

    def forward_backward():
        Hg.grad = None
        P = forward()
        if P.requires_grad:  # backward="none" builds no graph: P is a constant
            (P * G).sum().backward()

    return forward, forward_backward


def bench_case(case: Case, device: torch.device, args, bar: tqdm) -> list[list[str]]:
    H, prev, G = make_inputs(case, device)
    A = procrustes_target(H, prev, DELTA).contiguous()  # row-major, as the table has always timed it
    bare_svd = functools.partial(torch.linalg.svd, A, full_matrices=False)
    rows = []
    for method in METHODS:
        opts = SOLVER_OPTS[method]
        for backward in BACKWARDS:
            row = [device.type, case.label, method, backward]
            if backward == "ddn" and case.d * case.K > DDN_MAX_DK:
                rows.append(row + ["skipped (dense, O((dK)^2) memory)", "—", "—", "—", "—", "—"])
                bar.write(" | ".join(rows[-1]))
                bar.update()
                continue
            forward, forward_backward = solver_calls(H, prev, G, method, backward, opts)
            fns = {"svd": bare_svd, "fwd": forward}
            if backward != "none":  # backward="none" builds no graph through P: its fwd+bwd is its forward
                fns["both"] = forward_backward
            t = interleaved_ms(fns, device, args.repeats, args.budget_s, min_rounds=1)
            both = t.get("both", t["fwd"])
            fwd_ms = fmt_ms(statistics.median(t["fwd"]))
            mem = peak_extra_bytes(forward_backward, device)
            rows.append(
                row
                + [
                    fwd_ms,
                    fmt_ms(statistics.median(both)) if backward != "none" else f"{fwd_ms} (= fwd)",
                    fmt_ms(statistics.median(t["svd"])),
                    f"{median_ratio(both, t['svd']):.2f}",
                    str(len(both)),
                    "n/a (CPU)" if mem is None else fmt_bytes(mem),
                ]
            )
            bar.write(" | ".join(rows[-1]))
            bar.update()
    return rows


HEADER = [
    "device",
    "size (d, K)",
    "method",
    "backward",
    "fwd ms",
    "fwd+bwd ms",
    "bare SVD ms",
    "fwd+bwd / SVD",
    "rounds",
    "peak extra mem",
]


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


def import_before(path: Path):
    """The etf_train package under ``path`` (an older checkout), imported as etf_train_before next to the current one.
    -> its (solver, heads) modules"""
    init = path / "etf_train" / "__init__.py"
    if not init.is_file():
        raise SystemExit(
            f"--before {path}: no etf_train/__init__.py there (git archive <rev> etf_train | tar -x -C {path})"
        )
    spec = importlib.util.spec_from_file_location(
        "etf_train_before", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["etf_train_before"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("etf_train_before.solver"), importlib.import_module("etf_train_before.heads")


def summary_solver_rows(device: torch.device, args, before) -> list[list[str]]:
    rows = []
    for case in SUMMARY_CASES:
        H, prev, G = make_inputs(case, device)
        A = procrustes_target(H, prev, DELTA)
        A_row, A_col = A.contiguous(), A.mT.contiguous().mT
        fns = {
            "svd_row": functools.partial(torch.linalg.svd, A_row, full_matrices=False),
            "svd_col": functools.partial(torch.linalg.svd, A_col, full_matrices=False),
            "after": solver_calls(H, prev, G, "svd", "polar", {})[1],
        }
        if before is not None:
            fns["before"] = solver_calls(H, prev, G, "svd", "polar", {}, solve=before.nearest_etf)[1]
        t = interleaved_ms(fns, device, args.rounds, args.budget_s, min_rounds=3)
        med = {name: statistics.median(v) for name, v in t.items()}
        row = [device.type, case.label, fmt_ms(med["svd_row"]), fmt_ms(med["svd_col"])]
        if before is not None:
            row += [fmt_ms(med["before"]), f"{median_ratio(t['before'], t['svd_row']):.2f}"]
        row += [
            fmt_ms(med["after"]),
            f"{median_ratio(t['after'], t['svd_row']):.2f}",
            f"{median_ratio(t['after'], t['svd_col']):.2f}",
            str(len(t["after"])),
        ]
        rows.append(row)
        print(" | ".join(row), file=sys.stderr)
    return rows


def head_step(head: torch.nn.Module, f: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of a head: logits, cross-entropy, backward into the features f (a leaf, as in the UFM)."""

    def step():
        f.grad = None
        head.zero_grad(set_to_none=True)
        F.cross_entropy(head(f, y), y).backward()

    return step


def summary_head_rows(device: torch.device, args, before_heads) -> list[list[str]]:
    B, d, K = HEAD_SIZE
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(B, d, generator=gen).to(device).requires_grad_()
    y = (torch.arange(B) % K).to(device)
    contenders = {"learned": heads.LearnedHead(K, d), "nearest_etf": heads.NearestETFHead(K, d)}
    if before_heads is not None:
        contenders["nearest_etf (before)"] = before_heads.NearestETFHead(K, d)
    fns = {name: head_step(head.to(device), f, y) for name, head in contenders.items()}
    t = interleaved_ms(fns, device, args.rounds, args.budget_s, min_rounds=3)
    rows = []
    for name, head in contenders.items():
        solve = head.pop_solver_stats().get("solver/ms")
        rows.append(
            [
                device.type,
                name,
                fmt_ms(statistics.median(t[name])),
                f"{median_ratio(t[name], t['learned']):.2f}",
                fmt_ms(statistics.median(a - b for a, b in zip(t[name], t["learned"]))),
                "-" if solve is None else fmt_ms(solve),
                str(len(t[name])),
            ]
        )
        print(" | ".join(rows[-1]), file=sys.stderr)
    return rows


def summary_report(devices: list[torch.device], args) -> str:
    before_solver, before_heads = import_before(args.before) if args.before is not None else (None, None)
    solver_header = ["device", "size (d, K)", "bare SVD ms (A row-major)", "bare SVD ms (A column-major)"]
    if args.before is not None:
        solver_header += ["before fwd+bwd ms", "before / SVD row-major"]
    solver_header += ["fwd+bwd ms", "fwd+bwd / SVD row-major", "fwd+bwd / SVD column-major", "rounds"]
    head_header = ["device", "head", "step ms", "step / learned", "step - learned ms", "solve fwd ms", "rounds"]
    load_before = loadavg()
    solver_rows = [row for dev in devices for row in summary_solver_rows(dev, args, before_solver)]
    head_rows = [row for dev in devices for row in summary_head_rows(dev, args, before_heads)]
    load_after = loadavg()
    B, d, K = HEAD_SIZE
    return "\n".join(
        [
            *machine_lines(devices),
            f"- load average (1, 5, 15 min): before {load_before}, after {load_after}",
            *([f"- before: the package in {args.before}"] if args.before is not None else []),
            "",
            "nearest_etf(method=svd, backward=polar, check=False), float32, forward + backward of <P, G>:",
            "",
            markdown_table(solver_header, solver_rows),
            "",
            f"One head training step (forward, cross-entropy, backward into the features), B={B}, d={d}, K={K}, float32:",
            "",
            markdown_table(head_header, head_rows),
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "all"), default="all", help="all = cpu and cuda if available"
    )
    parser.add_argument("--repeats", type=int, default=50, help="most timed rounds per table row (default 50)")
    parser.add_argument(
        "--budget-s", type=float, default=3.0, help="time per median; slower calls are timed fewer times"
    )
    parser.add_argument("--out", type=Path, help="write the tables as markdown here")
    parser.add_argument("--threads", type=int, help="torch intra-op CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 repeats: a smoke run")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="only svd + polar vs the bare SVD at (512,10), (512,100), (2048,1000) and the heads' step, interleaved",
    )
    parser.add_argument(
        "--rounds", type=int, default=200, help="--summary: most interleaved rounds per table row (default 200)"
    )
    parser.add_argument("--before", type=Path, help="--summary: also time the etf_train package under this directory")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.before is not None and not args.summary:
        parser.error("--before applies to --summary only")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    if args.quick:
        args.repeats, args.budget_s = min(args.repeats, 2), min(args.budget_s, 0.5)
    return args


def full_report(devices: list[torch.device], args) -> str:
    cases = QUICK_CASES if args.quick else FULL_CASES
    load_before = loadavg()
    rows: list[list[str]] = []
    with tqdm(
        total=len(devices) * len(cases) * len(METHODS) * len(BACKWARDS), desc="solver bench", file=sys.stderr
    ) as bar:
        for device in devices:
            for case in cases:
                rows += bench_case(case, device, args, bar)
    load_after = loadavg()
    return "\n".join(
        [
            *machine_lines(devices),
            f"- load average (1, 5, 15 min): before {load_before}, after {load_after}",
            "",
            markdown_table(*_drop_memory_on_cpu(HEADER, rows, devices)),
            "",
            "Backward-pass memory, computed (not measured):",
            "",
            markdown_table(MEMORY_HEADER, memory_rows()),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    report = summary_report(devices, args) if args.summary else full_report(devices, args)
    print("\n" + report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
