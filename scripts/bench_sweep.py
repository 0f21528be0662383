"""Time to result of a UFM sweep: whole-command wall time against the training inside it, and the step cost.

Runs the real command, `etf-train -m experiment=ufm10 head=learned,fixed_etf,nearest_etf seed=... trainer.max_epochs=E`
in a subprocess (start-up, evaluation, NC metrics, checkpoints and event writes included), then reads every job's
`time/epoch_s` (the training part of each epoch) from its event files:

  wall s            the whole command
  training s        sum over jobs and epochs of time/epoch_s
  overhead          wall / training (the issue's goal: at most 2 per run at 200 epochs)
  step ms           training time per step, per head; solver ms (nearest_etf) and step / solve

    python scripts/bench_sweep.py                                   # UFM-10, 5 seeds, 200 epochs
    python scripts/bench_sweep.py --experiment ufm100 --seeds 1 --epochs 20 --extra dataset.per_class=20
    python scripts/bench_sweep.py --extra metrics.every_n_epochs=10  # NC metrics every 10 epochs

OMP_NUM_THREADS defaults to 1 here (a shared machine); the caption records it, the machine and the load.

With ``--before DIR`` (an older checkout: ``git worktree add DIR <rev>``) the same command also runs on that code
(PYTHONPATH=DIR, so its etf_train and configs/), alternating with the current code ``--repeats`` times, so both see
the same load; the table then has a row per version and the per-repeat ratio of their wall times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_data import emit, machine

from etf_train.rundir import read_scalars

HEADS = ("learned", "fixed_etf", "nearest_etf")


def sweep(command: list[str], env: dict, cwd: str, sweep_dir: Path) -> tuple[float, dict]:
    """Run the command; (wall s, head -> (epoch_s (runs, epochs), train samples/s (runs, epochs), solver ms (runs,)))."""
    began = time.perf_counter()
    subprocess.run([*command, f"hydra.sweep.dir={sweep_dir}"], check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    rows = {}
    for head in HEADS:
        runs = [read_scalars(r) for r in sorted(sweep_dir.glob(f"head={head}*"))]  # seed is in the name if swept
        epoch_s = np.array([c["time/epoch_s"][1] for c in runs])  # (seeds, epochs)
        rate = np.array([c["throughput/train_img_s"][1] for c in runs])
        solver = np.array([c["solver/ms"][1][1:].mean() for c in runs]) if "solver/ms" in runs[0] else None
        rows[head] = (epoch_s, rate, solver)
    return wall, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="ufm10")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for every job")
    p.add_argument("--batch", type=int, default=256, help="the experiment's batch size (to turn epochs into steps)")
    p.add_argument("--before", type=Path, help="an older checkout to time side by side")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    versions = {"current": env}
    if args.before is not None:
        versions = {f"before ({args.before})": {**env, "PYTHONPATH": str(args.before.resolve())}, **versions}
    exe = Path(sys.executable).with_name("etf-train")
    command = [
        str(exe),
        "-m",
        f"experiment={args.experiment}",
        f"head={','.join(HEADS)}",
        f"seed={','.join(str(s) for s in range(1, args.seeds + 1))}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.progress=false",
        *args.extra,
    ]
    load_before = os.getloadavg()
    results: dict[str, list] = {name: [] for name in versions}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, version_env in versions.items():
                results[name].append(
                    sweep(command, version_env, tmp, Path(tmp) / f"sweep{repeat}_{len(results[name])}_{name[:6]}")
                )
    load_after = os.getloadavg()
    lines = [
        f"`{' '.join(['etf-train', *command[1:]])}`: {len(HEADS) * args.seeds} runs, {args.repeats} repeat(s)"
        f"{' alternating with the older code' if args.before else ''}; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
        f"load average {' '.join(f'{x:.1f}' for x in load_before)} before, {' '.join(f'{x:.1f}' for x in load_after)} "
        f"after; {machine()}.",
        "",
        "| code | wall s (median) | training s (sum of time/epoch_s) | wall / training | head | training s per run "
        "(median) | step ms (median) | solver ms/step (median, no warm-up epoch) | step / solve |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, repeats in results.items():
        walls = [wall for wall, _ in repeats]
        wall, rows = repeats[int(np.argsort(walls)[len(walls) // 2])]  # the median repeat
        training = sum(e.sum() for e, _, _ in rows.values())
        for i, (head, (epoch_s, rate, solver)) in enumerate(rows.items()):
            samples = float(np.median(rate * epoch_s))  # training samples per epoch
            step_ms = 1e3 * float(np.median(epoch_s)) / -(-samples // args.batch)
            solve = "-" if solver is None else f"{np.median(solver):.3f}"
            ratio = "-" if solver is None else f"{step_ms / np.median(solver):.1f}"
            lead = f"| {name} | {wall:.1f} | {training:.1f} | {wall / training:.2f} |" if i == 0 else "| | | | |"
            lines.append(f"{lead} {head} | {np.median(epoch_s.sum(1)):.2f} | {step_ms:.2f} | {solve} | {ratio} |")
    if args.before is not None:
        before, current = results.values()
        ratios = [c[0] / b[0] for b, c in zip(before, current)]
        lines += ["", f"Wall time, current / before, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
