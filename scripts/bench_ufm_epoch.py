"""Where a UFM-10 epoch's time goes: the training steps (time/epoch_s) against the end-of-epoch passes (test
evaluation and NC metrics), per head, medians over timed epochs after warm-up.

    OMP_NUM_THREADS=1 python scripts/bench_ufm_epoch.py [--epochs 30] [--out table.md]
    # side by side with another checkout: PYTHONPATH=/path/to/other python scripts/bench_ufm_epoch.py --label before
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_data import emit, machine
from hydra import compose, initialize_config_dir

import etf_train
from etf_train.cli import config_dir
from etf_train.training import Run, SignalGuard

HEADS = ("learned", "fixed_etf", "nearest_etf")


def epoch_parts(head: str, epochs: int, warmup: int = 3) -> tuple[float, float]:
    """Median ms of the training steps and of the rest of an epoch (evaluation and NC passes)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["experiment=ufm10", f"head={head}", "trainer.device=cpu", "trainer.progress=false",
                       f"trainer.max_epochs={warmup + epochs + 1}"],
        )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        run = Run(cfg, Path(folder))
        train, rest = [], []
        for epoch in range(1, warmup + epochs + 1):
            start = time.perf_counter()
            scalars = run.run_epoch(epoch, SignalGuard(), None, None)
            if epoch > warmup:
                train.append(1e3 * scalars["time/epoch_s"])
                rest.append(1e3 * (time.perf_counter() - start) - train[-1])
        run.folder.end()
    return statistics.median(train), statistics.median(rest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--label", default="this checkout")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    lines = ["| code | head | training steps, ms | evaluation + NC passes, ms | ratio |", "|---|---|---:|---:|---:|"]
    for head in HEADS:
        train, rest = epoch_parts(head, args.epochs)
        lines.append(f"| {args.label} | {head} | {train:.1f} | {rest:.1f} | {rest / train:.2f} |")
    lines.append(f"\n{machine()}; etf_train from {Path(etf_train.__file__).parent}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
