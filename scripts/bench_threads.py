"""The thread cliff: training steps per second with 1 and 2 intra-op threads, alone and beside a busy neighbour
(a CPU-bound process), with and without OMP_WAIT_POLICY=PASSIVE (OpenMP threads that sleep instead of spinning
while they wait for each other).

Each configuration runs in a fresh process (the policy is read when torch's OpenMP runtime starts): a small_cnn
training step on a batch of 128 CIFAR-sized images, a few warm-up steps, then the median of timed steps. The
neighbour is a pure-Python busy loop, started before and stopped after each "beside a neighbour" measurement.

    python scripts/bench_threads.py
    python scripts/bench_threads.py --steps 20 --out /tmp/threads.md
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
from pathlib import Path

from bench_data import emit, machine

STEP = r"""
import statistics, time, torch
from etf_train.backbones import create_backbone
from etf_train.heads import create_head
torch.manual_seed(0)
net = create_backbone("small_cnn", in_shape=(3, 32, 32))
head = create_head("learned", 10, net.feature_dim)
params = [*net.parameters(), *head.parameters()]
opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
times = []
for i in range({warmup} + {steps}):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(head(net(x)), y)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t)
print(1.0 / statistics.median(times[{warmup}:]))
"""


def steps_per_s(threads: int, passive: bool, neighbour: bool, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["OMP_NUM_THREADS"] = str(threads)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
    try:
        out = subprocess.run(
            [sys.executable, "-c", STEP.format(warmup=3, steps=steps)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats of the whole table; the best is kept")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    configs = list(itertools.product((1, 2), (False, True)))
    best: dict[tuple, float] = {}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for (threads, passive), neighbour in itertools.product(configs, (False, True)):
            r = steps_per_s(threads, passive, neighbour, args.steps)
            best[(threads, passive, neighbour)] = max(r, best.get((threads, passive, neighbour), 0.0))
            print(threads, passive, neighbour, round(r, 2), flush=True)
    lines = [
        f"small_cnn training step, batch 128 at 32 px; best of {args.repeats} alternating repeats, median of "
        f"{args.steps} steps each; load average {load:.1f} before; {machine()}.",
        "",
        "| threads | OMP_WAIT_POLICY | steps/s alone | steps/s beside a busy process | slowdown |",
        "|---:|---|---:|---:|---:|",
    ]
    for threads, passive in configs:
        alone, busy = best[(threads, passive, False)], best[(threads, passive, True)]
        lines.append(
            f"| {threads} | {'PASSIVE' if passive else '(default)'} | {alone:.2f} | {busy:.2f} | {alone / busy:.1f}x |"
        )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
