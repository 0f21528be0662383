"""`etf-compare`: TensorBoard event files of finished runs -> a convergence table, CSV and PNG.

Contract with the trainer (what this module reads; the trainer's tests pin the writing side)
--------------------------------------------------------------------------------------------
- A run is a directory holding Hydra's saved composed config `.hydra/config.yaml` and
  TensorBoard event files `events.out.tfevents.*` directly in it. A sweep is
  `outputs/multirun/<date>/<time>/<job dir>/`, one run per job dir. `etf-compare` takes
  sweep or run folders and finds runs recursively (directories holding both).
- Scalars, step = epoch number (1-based); accuracies in percent (0..100):
  `train/loss`, `train/acc`, `test/loss`, `test/acc`, `lr`, `time/epoch_s`,
  `throughput/train_img_s`, `solver/ms` (mean solver ms per step over the epoch;
  nearest_etf head only), `solver/iters`, `solver/grad_norm` (riemannian solver only),
  `nc/nc1`, `nc/nc2_w`, `nc/nc2_h`, `nc/equinorm_w`, `nc/equinorm_h`, `nc/equiangular_w`,
  `nc/equiangular_h`, `nc/nc3`, `nc/nc4` (every few epochs and at the last one).
- A resumed run may hold several event files: they are merged, and for each
  (tag, step) the event with the later wall time wins.
- Config keys read: `head.name` (learned | fixed_etf | nearest_etf), `seed`,
  `dataset.name`, plus any dotted key named by `--group-by`.

Table notation
--------------
One row per group (the runs sharing the `--group-by` values, normally the seeds of one
setting). A cell `median [min, max]` summarises one number per run:
- "epochs to train acc >= T": the first epoch with train/acc >= T;
  "epochs to NC1 <= T": the first *logged* epoch with nc/nc1 <= T (so its resolution is
  the NC logging interval). A run that never reaches a threshold counts as `never`, which
  ranks after every epoch: `11 [10, never]` means the median run got there at epoch 11,
  the fastest at 10, and at least one run never did; `never [9, never]` means most runs
  never did; a bare `never` means no run did. comparison.csv holds the same numbers as
  `inf`, plus a `_reached` count per threshold.
- "final train/test acc": the value at each run's last logged epoch.
- "solver ms/step": mean over runs of each run's mean `solver/ms`; `-` where the group
  logs no solver time (heads without a solver).
Medians of an even number of runs are the mean of the middle two (e.g. `4.5`).
Default thresholds: train accuracy 90, 95, 99 %; NC1 1, 0.1, 0.01 (NC1 = tr(S_W S_B^+)/K
starts around 1-10 on random features and reaches ~1e-2 or below near collapse).

Plots: `comparison.png`, one panel per `--metrics` tag, per group the per-epoch median over
runs with a min-max band (runs of unequal length: statistics over the runs having that
epoch); a log y-axis where the values are positive and span more than 1.5 decades.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import EtfTrainError
from ..rundir import read_scalars
from .report import check_metrics, markdown, plot, spans_decades, table, write_csv
from .runs import Run, check_datasets, group_runs, load_runs, seed_collisions, warn
from .stats import Spread, epoch_stats, first_epoch, summarize

__all__ = ["Run", "Spread", "epoch_stats", "first_epoch", "group_runs", "load_runs", "main", "read_scalars",
           "spans_decades", "summarize"]

DEFAULT_METRICS = ("train/acc", "test/acc", "train/loss", "nc/nc1", "nc/nc3", "nc/equinorm_h")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etf-compare",
        description="Compare etf-train runs: epochs to accuracy / NC1 thresholds, final accuracies and solver "
        "time per group (median [min, max] over seeds), plus per-epoch curves.",
    )
    p.add_argument("folders", nargs="+", type=Path, help="sweep or run folders, searched recursively for runs")
    p.add_argument(
        "--group-by", nargs="+", default=["head"], metavar="KEY",
        help="dotted config keys that define a group ('head' = head.name); default: head",
    )
    p.add_argument(
        "--acc-thresholds", nargs="*", type=float, default=[90.0, 95.0, 99.0], metavar="PCT",
        help="train accuracy thresholds in percent; default: 90 95 99",
    )
    p.add_argument(
        "--nc1-thresholds", nargs="*", type=float, default=[1.0, 0.1, 0.01], metavar="X",
        help="NC1 thresholds; default: 1 0.1 0.01; give none to skip NC1",
    )
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="TAG", help="scalar tags to plot")
    p.add_argument("--out", type=Path, default=None, help="output folder; default: the first folder given")
    p.add_argument("--allow-mixed", action="store_true", help="allow runs of different dataset.name")
    p.add_argument("--include-unfinished", action="store_true",
                   help="count unfinished and failed runs too, up to their last logged epoch (marked in the table)")
    return p


def _check_thresholds(acc: Sequence[float], nc1: Sequence[float]) -> None:
    for t in acc:
        if not 1.0 < t <= 100.0:
            hint = f" (accuracies are in percent: {t * 100:g}?)" if 0 < t <= 1 else ""
            raise EtfTrainError(f"--acc-thresholds must lie in (1, 100], got {t:g}{hint}")
    for t in nc1:
        if not t > 0:
            raise EtfTrainError(f"--nc1-thresholds must be positive, got {t:g}")


def compare(args: argparse.Namespace) -> str:
    """Load, group, summarise and write the outputs; returns the text for stdout."""
    _check_thresholds(args.acc_thresholds, args.nc1_thresholds)
    runs = load_runs(args.folders)
    if not args.allow_mixed:
        check_datasets(runs)
    counted = [r for r in runs if r.counted or (args.include_unfinished and r.epochs)]
    if not counted:
        raise EtfTrainError(f"no finished runs under {', '.join(map(str, args.folders))} ({len(runs)} unfinished or "
                            "failed); --include-unfinished compares them up to their last epoch")
    check_metrics(counted, args.metrics)
    groups = group_runs(runs, args.group_by)
    for message in seed_collisions(group_runs(counted, args.group_by)):
        warn(message)
    summaries = [summarize(label, rs, args.acc_thresholds, args.nc1_thresholds, args.include_unfinished)
                 for label, rs in groups.items()]
    out = args.out if args.out is not None else args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(*table(summaries), [r for r in runs if not r.counted], args.include_unfinished)
    (out / "comparison.md").write_text(text)
    write_csv(out / "comparison.csv", summaries)
    plot(out / "comparison.png", group_runs(counted, args.group_by), args.metrics)
    return text + f"\nwrote {out / 'comparison.md'}, {out / 'comparison.csv'}, {out / 'comparison.png'}\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        text = compare(args)
    except EtfTrainError as e:
        print(f"etf-compare: error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0
