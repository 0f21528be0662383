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
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from etf_train.errors import EtfTrainError

Curve = tuple[np.ndarray, np.ndarray]  # (steps int64 (n,), values float64 (n,)), steps ascending

EVENT_GLOB = "events.out.tfevents.*"
CONFIG_FILE = Path(".hydra") / "config.yaml"
GROUP_ALIASES = {"head": "head.name"}
TRAIN_ACC, TEST_ACC, NC1, SOLVER_MS = "train/acc", "test/acc", "nc/nc1", "solver/ms"
DEFAULT_METRICS = ("train/acc", "test/acc", "train/loss", "nc/nc1", "nc/nc3", "nc/equinorm_h")
LOG_SCALE_DECADES = 1.5


@dataclass(frozen=True)
class Run:
    path: Path
    config: DictConfig
    scalars: dict[str, Curve]


@dataclass(frozen=True)
class Spread:
    """One value per run; `inf` marks a threshold the run never reached."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.values))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def reached(self) -> int:
        return sum(math.isfinite(v) for v in self.values)

    def format(self, spec: str) -> str:
        """`median [min, max]`, with `never` for inf and a bare `never` when no run got there."""
        if self.reached == 0:
            return "never"
        f = lambda x: "never" if math.isinf(x) else format(x, spec)  # noqa: E731
        return f"{f(self.median)} [{f(self.min)}, {f(self.max)}]"


@dataclass(frozen=True)
class EpochStats:
    """Per-epoch statistics over the runs that logged that epoch.  # all (n_epochs,)"""

    epochs: np.ndarray
    median: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class GroupSummary:
    label: str
    n_runs: int
    epochs: Spread
    acc_epochs: dict[float, Spread]  # threshold -> epochs to train/acc >= threshold
    nc1_epochs: dict[float, Spread]  # threshold -> epochs to nc/nc1 <= threshold
    final_train_acc: Spread
    final_test_acc: Spread
    solver_ms: float | None


def _warn(message: str) -> None:
    print(f"etf-compare: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- loading


def find_runs(folder: Path) -> list[Path]:
    """Run directories under `folder` (itself included), sorted."""
    if not folder.is_dir():
        raise EtfTrainError(f"{'not a folder' if folder.exists() else 'folder does not exist'}: {folder}")
    runs = []
    for config in sorted(folder.rglob(str(CONFIG_FILE))):
        run_dir = config.parent.parent
        if any(p.is_file() for p in run_dir.glob(EVENT_GLOB)):
            runs.append(run_dir)
        else:
            # A job that died before its first epoch: say so rather than silently losing a seed.
            _warn(f"skipping {run_dir}: it has {CONFIG_FILE} but no {EVENT_GLOB} files")
    if not runs:
        raise EtfTrainError(
            f"no runs under {folder}: a run is a directory holding {CONFIG_FILE} and {EVENT_GLOB} files"
        )
    return runs


def read_scalars(run_dir: Path) -> dict[str, Curve]:
    """All scalars of the event files directly in `run_dir`; per (tag, step) the latest wall time wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    latest: dict[str, dict[int, tuple[float, float]]] = {}  # tag -> step -> (wall_time, value)
    for events in sorted(run_dir.glob(EVENT_GLOB)):
        # One accumulator per file, without TensorBoard's purging: the merge below decides.
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            by_step = latest.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                if ev.step not in by_step or ev.wall_time >= by_step[ev.step][0]:
                    # Events hold float32: take its shortest decimal, so a logged 0.1 reads 0.1 (and
                    # compares <= 0.1), not 0.10000000149.
                    by_step[ev.step] = (ev.wall_time, float(str(np.float32(ev.value))))
    scalars = {}
    for tag, by_step in latest.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        scalars[tag] = (steps, np.array([by_step[s][1] for s in steps.tolist()], dtype=np.float64))
    return scalars


def load_run(run_dir: Path) -> Run:
    config_path = run_dir / CONFIG_FILE
    try:
        config = OmegaConf.load(config_path)
    except Exception as e:  # yaml and OmegaConf raise many types; all mean "unreadable config"
        raise EtfTrainError(f"cannot read {config_path}: {str(e).splitlines()[0]}") from e
    if not isinstance(config, DictConfig):
        raise EtfTrainError(f"{config_path} is not a mapping")
    return Run(run_dir, config, read_scalars(run_dir))


def load_runs(folders: Sequence[Path]) -> list[Run]:
    seen: dict[Path, Path] = {}  # resolved -> as found; overlapping folders give each run once
    for folder in folders:
        for run_dir in find_runs(folder):
            seen.setdefault(run_dir.resolve(), run_dir)
    return [load_run(run_dir) for run_dir in seen.values()]


# ----------------------------------------------------------------------------- grouping

_MISSING = object()


def config_value(run: Run, key: str) -> object:
    """The value at a dotted config key, or _MISSING."""
    try:
        value = OmegaConf.select(run.config, key, default=_MISSING)
    except Exception as e:  # an interpolation that only resolves inside Hydra
        raise EtfTrainError(f"run {run.path}: cannot resolve config key '{key}': {e}") from e
    if isinstance(value, (DictConfig, ListConfig)):
        raise EtfTrainError(
            f"config key '{key}' of run {run.path} is a section, not a value; group by one of its keys"
        )
    return value


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> dict[str, list[Run]]:
    """Runs by the '/'-joined values of `keys` ('-' where a run lacks a key), in sorted key order."""
    keys = [GROUP_ALIASES.get(k, k) for k in keys]
    values = {id(run): [config_value(run, k) for k in keys] for run in runs}
    for i, key in enumerate(keys):
        if all(v[i] is _MISSING for v in values.values()):
            raise EtfTrainError(f"no run has config key '{key}' (from --group-by)")

    def sort_key(vals: list[object]) -> tuple:
        # numbers numerically, then strings, then missing values
        return tuple(
            (2, "") if v is _MISSING
            else (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool)
            else (1, str(v))
            for v in vals
        )

    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (sort_key(values[id(r)]), str(r.path))):
        label = "/".join("-" if v is _MISSING else str(v) for v in values[id(run)])
        groups.setdefault(label, []).append(run)
    return groups


def check_datasets(runs: Sequence[Run]) -> None:
    """Refuse to compare runs of different `dataset.name`."""
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        name = config_value(run, "dataset.name")
        by_name.setdefault("-" if name is _MISSING else str(name), []).append(run)
    if len(by_name) > 1:
        parts = ", ".join(f"{n} ({len(rs)} runs, e.g. {rs[0].path})" for n, rs in sorted(by_name.items()))
        raise EtfTrainError(f"runs mix datasets: {parts}; compare one dataset at a time or pass --allow-mixed")


def _flatten(node: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, object] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def seed_collisions(groups: dict[str, list[Run]]) -> list[str]:
    """Messages for groups holding two runs with the same seed: the median 'over seeds' would pool settings."""
    messages = []
    for label, runs in groups.items():
        by_seed: dict[object, list[Run]] = {}
        for run in runs:
            seed = config_value(run, "seed")
            if seed is not _MISSING:
                by_seed.setdefault(seed, []).append(run)
        for seed, same in by_seed.items():
            if len(same) < 2:
                continue
            a, b = (_flatten(OmegaConf.to_container(r.config, resolve=False)) for r in same[:2])
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))
            why = (
                f"they differ in {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}; add such keys to --group-by"
                if diff
                else "their configs are identical (the same run given twice?)"
            )
            paths = f"{same[0].path}, {same[1].path}"
            messages.append(f"group '{label}' holds {len(same)} runs with seed {seed} ({paths}): {why}")
    return messages


# ----------------------------------------------------------------------------- statistics


def first_epoch(curve: Curve, threshold: float, above: bool) -> float:
    """The first step with value >= threshold (above) or <= threshold (not above); inf if none."""
    steps, values = curve
    hit = np.flatnonzero(values >= threshold if above else values <= threshold)
    return float(steps[hit[0]]) if hit.size else math.inf


def epoch_stats(runs: Sequence[Run], tag: str) -> EpochStats:
    """Median, min and max of `tag` per epoch over the runs that logged that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        if tag in run.scalars:
            steps, values = run.scalars[tag]
            for s, v in zip(steps.tolist(), values.tolist()):
                by_epoch.setdefault(s, []).append(v)
    epochs = sorted(by_epoch)
    cols = [by_epoch[e] for e in epochs]
    return EpochStats(
        epochs=np.array(epochs, dtype=np.int64),
        median=np.array([np.median(c) for c in cols]),
        min=np.array([np.min(c) for c in cols]),  # np, not builtins: a NaN (diverged run) propagates
        max=np.array([np.max(c) for c in cols]),
        count=np.array([len(c) for c in cols], dtype=np.int64),
    )


def _curve(run: Run, tag: str, why: str) -> Curve:
    if tag not in run.scalars:
        raise EtfTrainError(f"run {run.path} has no scalar '{tag}' ({why})")
    return run.scalars[tag]


def summarize(
    label: str, runs: Sequence[Run], acc_thresholds: Sequence[float], nc1_thresholds: Sequence[float]
) -> GroupSummary:
    """One table row: threshold epochs, final accuracies and solver time over the group's runs."""
    train = [_curve(r, TRAIN_ACC, "needed by the table") for r in runs]
    test = [_curve(r, TEST_ACC, "needed by the table") for r in runs]
    skip_nc1 = "needed by --nc1-thresholds; pass the option with no values to skip"
    nc1 = [_curve(r, NC1, skip_nc1) for r in runs] if nc1_thresholds else []
    with_solver = [r for r in runs if SOLVER_MS in r.scalars]
    for r in runs:
        if with_solver and SOLVER_MS not in r.scalars:
            raise EtfTrainError(f"run {r.path} has no scalar '{SOLVER_MS}' (other runs of group '{label}' log it)")
    return GroupSummary(
        label=label,
        n_runs=len(runs),
        epochs=Spread(tuple(float(s[-1]) for s, _ in train)),
        acc_epochs={t: Spread(tuple(first_epoch(c, t, above=True) for c in train)) for t in acc_thresholds},
        nc1_epochs={t: Spread(tuple(first_epoch(c, t, above=False) for c in nc1)) for t in nc1_thresholds},
        final_train_acc=Spread(tuple(float(v[-1]) for _, v in train)),
        final_test_acc=Spread(tuple(float(v[-1]) for _, v in test)),
        solver_ms=float(np.mean([r.scalars[SOLVER_MS][1].mean() for r in with_solver])) if with_solver else None,
    )


# ----------------------------------------------------------------------------- outputs


def table(summaries: Sequence[GroupSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows (thresholds taken from the summaries, which share them)."""
    first = summaries[0]
    header = (
        ["group", "runs", "epochs"]
        + [f"train acc >= {t:g}%" for t in first.acc_epochs]
        + [f"NC1 <= {t:g}" for t in first.nc1_epochs]
        + ["final train acc %", "final test acc %", "solver ms/step"]
    )
    rows = [
        [s.label, str(s.n_runs), s.epochs.format("g")]
        + [sp.format("g") for sp in s.acc_epochs.values()]
        + [sp.format("g") for sp in s.nc1_epochs.values()]
        + [
            s.final_train_acc.format(".2f"),
            s.final_test_acc.format(".2f"),
            "-" if s.solver_ms is None else f"{s.solver_ms:.3f}",
        ]
        for s in summaries
    ]
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cell = lambda c: c.replace("|", r"\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    lines += [
        "",
        "Cells: median [min, max] over the runs of a group. Threshold columns: the first epoch at which "
        "train/acc >= T or nc/nc1 <= T; `never` = a run never got there within its epochs (ranked after every "
        "epoch); a bare `never` = no run did.",
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, summaries: Sequence[GroupSummary]) -> None:
    """Numbers unformatted: median/min/max columns per cell, `inf` = never, `_reached` = runs that got there."""
    first = summaries[0]
    spread_cols = (
        [("epochs", lambda s: s.epochs)]
        + [(f"epochs_to_train_acc_ge_{t:g}", lambda s, t=t: s.acc_epochs[t]) for t in first.acc_epochs]
        + [(f"epochs_to_nc1_le_{t:g}", lambda s, t=t: s.nc1_epochs[t]) for t in first.nc1_epochs]
        + [("final_train_acc", lambda s: s.final_train_acc), ("final_test_acc", lambda s: s.final_test_acc)]
    )
    reached = {name for name, _ in spread_cols if name.startswith("epochs_to_")}
    header = ["group", "runs"]
    for name, _ in spread_cols:
        header += [f"{name}_median", f"{name}_min", f"{name}_max"] + ([f"{name}_reached"] if name in reached else [])
    header.append("solver_ms_per_step")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for s in summaries:
            row: list[object] = [s.label, s.n_runs]
            for name, get in spread_cols:
                sp = get(s)
                row += [sp.median, sp.min, sp.max] + ([sp.reached] if name in reached else [])
            row.append("" if s.solver_ms is None else s.solver_ms)
            writer.writerow(row)


def check_metrics(runs: Sequence[Run], metrics: Sequence[str]) -> None:
    """Each plotted tag must exist in some run (a group without it just has no line)."""
    tags = {tag for r in runs for tag in r.scalars}
    for tag in metrics:
        if tag not in tags:
            raise EtfTrainError(f"no run has scalar '{tag}' (from --metrics); available: {', '.join(sorted(tags))}")


def spans_decades(values: np.ndarray, decades: float = LOG_SCALE_DECADES) -> bool:
    """True when all finite values are positive and max/min > 10**decades (worth a log axis)."""
    v = values[np.isfinite(values)]
    return v.size > 0 and bool(np.all(v > 0)) and math.log10(v.max() / v.min()) > decades


def plot(path: Path, groups: dict[str, list[Run]], metrics: Sequence[str], dpi: int = 100) -> None:
    """One panel per metric (each in some run: check_metrics): per group the per-epoch median, min-max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), dpi=dpi)
    FigureCanvasAgg(fig)  # Agg explicitly, no pyplot global state
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for ax, tag in zip(axes, metrics):
        seen = []
        for color, runs in zip(colors, groups.values()):
            st = epoch_stats(runs, tag)
            if st.epochs.size == 0:
                continue  # e.g. solver/ms for a head without a solver
            ax.plot(st.epochs, st.median, color=color, lw=1.5)
            ax.fill_between(st.epochs, st.min, st.max, color=color, alpha=0.2, lw=0)
            seen += [st.min, st.max]
        if not tag.endswith("acc") and spans_decades(np.concatenate(seen)):  # accuracies (%) stay linear
            ax.set_yscale("log")
        ax.set_title(tag)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, lw=1.5) for c in colors]
    axes[0].legend(handles, list(groups), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


# ----------------------------------------------------------------------------- CLI


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
    check_metrics(runs, args.metrics)
    groups = group_runs(runs, args.group_by)
    for message in seed_collisions(groups):
        _warn(message)
    summaries = [summarize(label, rs, args.acc_thresholds, args.nc1_thresholds) for label, rs in groups.items()]
    out = args.out if args.out is not None else args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(*table(summaries))
    (out / "comparison.md").write_text(text)
    write_csv(out / "comparison.csv", summaries)
    plot(out / "comparison.png", groups, args.metrics)
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


if __name__ == "__main__":
    sys.exit(main())
