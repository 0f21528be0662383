"""CPU image models side by side: the time of one training step (forward, backward, SGD step) per 32-px image.

The models are built by etf-train's own backbone registry and timed round-robin in one process (one step of each
in turn, a discarded warm-up round, then the median over rounds), so load changes hit every model alike; the
ratio column is the median of per-round ratios against the first model. Accuracy at equal epochs comes from the
training runs themselves (docs/benchmarks.md gives the command).

    OMP_NUM_THREADS=1 python scripts/bench_models.py
    python scripts/bench_models.py --models small_cnn fast_cnn --batch 64 --rounds 20 --out /tmp/models.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from bench_data import emit, machine

from etf_train.backbones import create_backbone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["small_cnn", "fast_cnn"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    x = torch.randn(args.batch, 3, args.size, args.size)
    models = {name: create_backbone(name, in_shape=tuple(x.shape[1:])) for name in args.models}
    optimisers = {name: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds + 1):
        for name, model in models.items():
            t0 = time.perf_counter()
            model(x).square().mean().backward()
            optimisers[name].step()
            optimisers[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    first = args.models[0]
    lines = [
        f"Training step, batch {args.batch} at {args.size} px, median of {args.rounds} round-robin rounds; load "
        f"average {load_before:.1f} before; {machine()}.",
        "",
        f"| model | parameters | ms per image | step / {first}'s |",
        "|---|---:|---:|---:|",
    ]
    for name, model in models.items():
        per_image = 1000 * statistics.median(times[name][1:]) / args.batch
        ratio = statistics.median(t / b for t, b in zip(times[name][1:], times[first][1:]))
        params = sum(p.numel() for p in model.parameters())
        lines.append(f"| {name} | {params:,} | {per_image:.2f} | {ratio:.2f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
