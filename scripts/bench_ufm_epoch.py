"""Where a UFM-10 epoch's time goes: the training steps (time/epoch_s) against the end-of-epoch passes (test
evaluation and NC metrics), per head, medians over timed epochs after warm-up. The NC metrics' own cost is an
evaluation pass with them less one without, both timed again on each epoch's model.

    OMP_NUM_THREADS=1 python scripts/bench_ufm_epoch.py [--epochs 30] [--out table.md]
    # side by side with another checkout: PYTHONPATH=/path/to/other python scripts/bench_ufm_epoch.py --label before
    # with settings added to experiment=ufm10: ... --label "erank_sw on" metrics.erank_sw=true
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

from bench_data import emit, machine
from hydra import compose, initialize_config_dir

import etf_train
from etf_train.cli import config_dir
from etf_train.training import Run, SignalGuard
from etf_train.training.evaluate import evaluate

HEADS = ("learned", "fixed_etf", "nearest_etf")


def _evaluation(run: Run, nc: bool) -> float:
    """ms of one evaluation pass over UFM's train set (its test split) with the end-of-epoch model, as the epoch
    runs it, with or without the NC metrics (an older checkout's evaluate has no erank_sw: it always forms S_W)."""
    kwargs = {"erank_sw": run.cfg.metrics.erank_sw} if "erank_sw" in inspect.signature(evaluate).parameters else {}
    start = time.perf_counter()
    evaluate(run.model, run.eval_train_loader, run.device, run.autocast, run.world, run.K, nc=nc, **kwargs)
    return 1e3 * (time.perf_counter() - start)


def epoch_parts(head: str, epochs: int, extra: list[str], warmup: int = 3) -> tuple[float, float, float, float]:
    """Median ms of the training steps, of the rest of the epoch (its evaluation and NC passes), and of one
    evaluation pass without and with the NC metrics, timed again after each epoch."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["experiment=ufm10", f"head={head}", "trainer.device=cpu", "trainer.progress=false",
                       f"trainer.max_epochs={warmup + epochs + 1}", *extra],
        )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        run = Run(cfg, Path(folder))
        train, rest, plain, with_nc = [], [], [], []
        for epoch in range(1, warmup + epochs + 1):
            start = time.perf_counter()
            scalars = run.run_epoch(epoch, SignalGuard(), None, None)
            if epoch > warmup:
                train.append(1e3 * scalars["time/epoch_s"])
                rest.append(1e3 * (time.perf_counter() - start) - train[-1])
                plain.append(_evaluation(run, nc=False))
                with_nc.append(_evaluation(run, nc=True))
        run.folder.end()
    return tuple(statistics.median(t) for t in (train, rest, plain, with_nc))


def main() -> None:
    try:  # as etf-train's CLI does at start; an older checkout has no heap.py and ran on glibc's defaults
        from etf_train.heap import keep_freed_memory

        keep_freed_memory()
    except ImportError:
        pass
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--label", default="this checkout")
    p.add_argument("--out", type=Path)
    p.add_argument("overrides", nargs="*", help="Hydra overrides added to experiment=ufm10")
    args = p.parse_args()
    lines = [
        "| code | head | training steps, ms | rest of the epoch, ms | evaluation alone, ms | NC metrics, ms "
        "| NC / training |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for head in HEADS:
        train, rest, plain, with_nc = epoch_parts(head, args.epochs, args.overrides)
        nc = with_nc - plain
        lines.append(
            f"| {args.label} | {head} | {train:.1f} | {rest:.1f} | {plain:.1f} | {nc:.1f} | {nc / train:.2f} |"
        )
    lines.append(f"\n{machine()}; etf_train from {Path(etf_train.__file__).parent}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
