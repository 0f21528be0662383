"""`etf-compare`: TensorBoard event files of finished runs -> a convergence table, CSV and figure.

Contract with the trainer (what this module reads; the trainer's tests pin the writing side)
--------------------------------------------------------------------------------------------
- A run is a directory holding Hydra's saved composed config `.hydra/config.yaml` and
  TensorBoard event files `events.out.tfevents.*` directly in it. A sweep is
  `outputs/multirun/<date>/<time>_<id>/<job dir>/`, one run per job dir. `etf-compare` takes
  sweep or run folders and finds runs recursively (directories holding both).
- Scalars, step = epoch number (1-based); accuracies in percent (0..100):
  every epoch `train/loss`, `train/acc` (measured during training), `test/loss`, `test/acc`, `lr`,
  `time/epoch_s`, `throughput/train_img_s`, `solver/ms` (mean solver ms per step over the epoch;
  nearest_etf head only), `solver/iters`, `solver/grad_norm` (riemannian solver only);
  every `metrics.every_n_epochs` epochs and at the last one `train/eval_acc` (eval mode, un-augmented
  train set, end-of-epoch model), `nc/nc1`, `nc/nc2_w`, `nc/nc2_h`, `nc/equinorm_w`, `nc/equinorm_h`,
  `nc/equiangular_w`, `nc/equiangular_h`, `nc/nc3`, `nc/nc4`.
- A resumed run may hold several event files: they are merged, and for each
  (tag, step) the event with the later wall time wins.
- Config keys read: `head.name` (learned | fixed_etf | nearest_etf), `seed`, `dataset.name`,
  for the figure's title and labels `backbone.name`, `optimizer._target_`, `loss.name`, plus any
  dotted key named by `--group-by`.

Table notation
--------------
One row per group (the runs sharing the `--group-by` values, normally the seeds of one
setting), named `key=value, ...` as in the figure's legend. A cell `median [min, max]`
summarises one number per run:
- "train/eval_acc >= T%", "test/acc >= T%", "NC1 <= T": the first *logged* epoch at which the
  tag reaches T. train/eval_acc and nc/nc1 are logged every metrics.every_n_epochs epochs, so
  their resolution is that interval (with every_n_epochs=5, a run that got there at epoch 7
  counts as 10). `--acc-tag train/acc` thresholds the accuracy measured during training
  instead, labelled so: it flatters nearest_etf early (its classifier is fitted to running means
  that include the batch). A run that never reaches a threshold counts as `never`, which
  ranks after every epoch: `11 [10, never]` means the median run got there at epoch 11,
  the fastest at 10, and at least one run never did; `never [9, never]` means at least
  half the runs never did (an even count's median is the mean of the middle two); a bare
  `never` means no run did. comparison.csv holds the same numbers, `never` as `inf`, plus a
  `_reached` count per threshold; its cells are empty where a table cell is `-` (no runs, or
  no solver).
- "final <acc tag> %", "final test/acc %": the value at each run's last logged epoch.
- "solver ms/step": per run the mean of `solver/ms` without its first epoch (warm-up; a
  one-epoch run keeps it); `-` where the group logs no solver time (heads without a solver).
Medians of an even number of runs are the mean of the middle two (e.g. `4.5`).
Default thresholds: accuracies 90, 95, 99 % (`--test-acc-thresholds` defaults to the
`--acc-thresholds` values); NC1 1, 0.1, 0.01 and every further decade that every group's median
curve reaches (NC1 = tr(S_W S_B^+)/K starts around 1-10 on random features and goes down to 1e-7
on UFM): where the curves cross is where a lead can turn.

The answer comes first (answer.py): against a baseline group (--baseline; by default the one
learned-head group), each group's speed-up at the first NC1 threshold where they differ and at the
deepest one both reach, and at the highest train-accuracy threshold both reach: baseline epochs /
group epochs, the median over the seeds both ran (paired: every head of a seed starts from the same
backbone), where the median curves cross (speedup.py), and the setting and the command that
reproduce the runs (setting.py). comparison.md holds it above the full table and a speed-up table;
the terminal shows it above a table that fits 120 columns; curves.csv holds every logged value
(curves.py; `etf_train.compare.curves(folder)` returns the same rows).

Figure: `comparison.<--format>`, one panel per `--metrics` tag, per group the per-epoch median
over runs with a min-max band (runs of unequal length: statistics over the runs having that
epoch), markers on curves logged every few epochs; a log y-axis where the values are positive
and span more than 1.5 decades, accuracies always linear (etf_train/compare/plot.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import sweepdir
from ..errors import EtfTrainError
from ..options import error_line, output_folder, writing
from ..rundir import read_scalars
from ..view import ADDRESS_ENV, address, how_to_look
from .analysis import OTHER_METRICS, Analysis, analyse
from .curves import curve_rows, curves, write_curves
from .plot import FORMATS, figure, spans_decades
from .report import markdown, notes, speedup_table, table, write_csv
from .runs import RecordedRun, group_runs, load_runs
from .serve import serve
from .speedup import Speedup, choose_baseline, crossings, nc1_thresholds, speedup
from .stats import ACC_TAGS, EVAL_ACC, Spread, epoch_stats, first_epoch, summarize, thresholds
from .steps import over_steps

__all__ = [
    "RecordedRun",
    "Speedup",
    "Spread",
    "choose_baseline",
    "crossings",
    "curves",
    "epoch_stats",
    "figure",
    "first_epoch",
    "group_runs",
    "load_runs",
    "main",
    "nc1_thresholds",
    "read_scalars",
    "spans_decades",
    "speedup",
    "summarize",
    "sweep_end",
    "thresholds",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etf-compare",
        description="Compare etf-train runs: epochs to accuracy / NC1 thresholds, final accuracies and solver "
        "time per group (median [min, max] over seeds), plus per-epoch curves.",
    )
    p.add_argument("folders", nargs="+", type=Path, help="sweep or run folders, searched recursively for runs")
    p.add_argument(
        "--group-by",
        nargs="+",
        default=["head"],
        metavar="KEY",
        help="dotted config keys that define a group ('head' = head.name); default: head",
    )
    p.add_argument(
        "--acc-tag",
        choices=ACC_TAGS,
        default=EVAL_ACC,
        help=f"the train accuracy for thresholds, finals and the first panel; default: {EVAL_ACC} (eval mode, "
        "logged every metrics.every_n_epochs epochs); train/acc is measured during training (runs from before "
        f"{EVAL_ACC} was logged have only it)",
    )
    p.add_argument(
        "--acc-thresholds",
        nargs="*",
        type=float,
        default=[90.0, 95.0, 99.0],
        metavar="PCT",
        help="train accuracy (--acc-tag) thresholds in percent; default: 90 95 99",
    )
    p.add_argument(
        "--test-acc-thresholds",
        nargs="*",
        type=float,
        metavar="PCT",
        help="test/acc thresholds in percent; default: the --acc-thresholds values; give none to skip",
    )
    p.add_argument(
        "--nc1-thresholds",
        nargs="*",
        type=float,
        metavar="X",
        help="NC1 thresholds; default: 1 0.1 0.01 and every further decade that every group's median reaches; "
        "give none to skip NC1",
    )
    p.add_argument(
        "--baseline",
        metavar="GROUP",
        help="the group the speed-ups are against (its label, or a part of one label, e.g. learned_authors); "
        "default: the one learned-head group when there is exactly one",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="TAG",
        help=f"scalar tags to plot; default: the --acc-tag, {' '.join(OTHER_METRICS)}",
    )
    p.add_argument("--per-seed", action="store_true", help="draw each run as a thin line beside its group's median")
    p.add_argument(
        "--serve",
        action="store_true",
        help="then start TensorBoard on exactly these runs, coloured by group, until Ctrl-C",
    )
    p.add_argument(
        "--host",
        help=f"TensorBoard's host in the link and for --serve (default: ${ADDRESS_ENV} or localhost)",
    )
    p.add_argument(
        "--port",
        type=int,
        help=f"TensorBoard's port (default: ${ADDRESS_ENV} or 6006; --serve: a free one)",
    )
    p.add_argument(
        "--x",
        choices=("epochs", "steps"),
        default="epochs",
        help="the figure's x axis: epochs, or optimiser steps (epoch x steps an epoch), where groups take "
        "different numbers of steps an epoch; default: %(default)s",
    )
    p.add_argument("--format", choices=FORMATS, default="png", help="figure file format; default: %(default)s")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution (png); default: %(default)s")
    p.add_argument("--out", type=Path, help="output folder; default: the first folder given")
    p.add_argument("--allow-mixed", action="store_true", help="allow runs of different dataset.name")
    p.add_argument(
        "--include-unfinished",
        action="store_true",
        help="count unfinished and failed runs too, up to their last logged epoch (marked in the table)",
    )
    return p


def compare(args: argparse.Namespace, a: Analysis) -> str:
    """Write the outputs of an analysis; returns the text for stdout."""
    out = output_folder("--out", args.folders[0] if args.out is None else args.out, given=args.out is not None)
    after = speedup_table(a.summaries, a.baseline, a.limits, a.speed) if a.baseline is not None else []
    text = markdown(
        *table(list(a.summaries.values())),
        [r for r in a.runs if not r.counted],
        args.include_unfinished,
        notes(args.acc_tag),
        a.warnings,
        a.intro,
        after,
    )
    drawn = over_steps(a.drawn) if args.x == "steps" else a.drawn
    fig = figure(
        drawn,
        a.metrics,
        {label: len(rs) for label, rs in a.groups.items()},
        len(a.warnings),
        a.nc1,
        args.per_seed,
        xlabel="optimiser step" if args.x == "steps" else "epoch",
        described=a.drawn,
    )
    with writing(out / "comparison.md") as path:
        path.write_text(text)
    with writing(out / "comparison.csv") as path:
        write_csv(path, list(a.summaries.values()), a.speed)
    with writing(out / "curves.csv") as path:
        write_curves(path, curve_rows(a.drawn))
    with writing(out / f"comparison.{args.format}") as fig_path:
        fig.savefig(fig_path, dpi=args.dpi)
    return (
        "\n".join(a.terminal()) + f"\n\nwrote {out / 'comparison.md'}, {out / 'comparison.csv'}, "
        f"{out / 'curves.csv'}, {fig_path}\n{how_to_look(args.folders, args.host, args.port)}\n"
    )


def sweep_end(folder: Path) -> str:
    """What `etf-train -m` prints when a sweep ends, failed jobs or not: the answer and the compact table of its
    finished runs (etf-compare's defaults, no files written), the runs that failed or did not finish with their
    one-line reasons, and where to look next."""
    lines = []
    try:
        a = analyse(_parser().parse_args([str(folder)]))
        lines += [*a.terminal(full=f"etf-compare {folder}"), ""]
        others = [r for r in a.runs if not r.counted]
    except (EtfTrainError, OSError) as e:  # the sweep's own runs stay listed below either way
        lines += [f"no comparison: {error_line(e)}", ""]
        others = []
    if others:
        lines += [
            f"{len(others)} of {len(others) + sum(r.counted for r in a.runs)} runs not counted:",
            *(f"- {r.describe()}" for r in others),
            "",
        ]
    refused = sweepdir.refused_jobs(folder)
    if refused:
        lines += [
            f"{len(refused)} job{'s' * (len(refused) > 1)} refused before starting:",
            *(f"- {j}" for j in refused),
            "",
        ]
    lines += [how_to_look(folder), f"table, plots and curves.csv: etf-compare {folder}"]
    return "\n".join(f"etf-train: {line}" if line else "" for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        a = analyse(args)
        print(compare(args, a), end="", flush=True)
        if args.serve:
            return serve(
                {label: rs for label, rs in a.drawn.items() if rs}, *address(args.host, args.port if args.port else 0)
            )
    except (EtfTrainError, OSError) as e:  # OSError: a path the file system refuses to read (too long, say)
        print(f"etf-compare: error: {error_line(e)}", file=sys.stderr)
        return 2
    return 0
