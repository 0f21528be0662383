"""etf-compare's outputs: the markdown table, the CSV and the figure."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import EtfTrainError
from .runs import Run
from .stats import GroupSummary, epoch_stats

LOG_SCALE_DECADES = 1.5


def _runs_cell(s: GroupSummary) -> str:
    """`3/5`, or `3/5 (+2 unfinished counted)` with --include-unfinished."""
    extra = s.n_runs - s.n_finished
    return f"{s.n_finished}/{s.n_total}" + (f" (+{extra} unfinished counted)" if extra else "")


def table(summaries: Sequence[GroupSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows (thresholds taken from the summaries, which share them)."""
    first = summaries[0]
    header = (
        ["group", "runs finished", "epochs"]
        + [f"train acc >= {t:g}%" for t in first.acc_epochs]
        + [f"NC1 <= {t:g}" for t in first.nc1_epochs]
        + ["final train acc %", "final test acc %", "solver ms/step"]
    )
    rows = [
        [s.label, _runs_cell(s), s.epochs.format("g")]
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


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], others: Sequence[Run] = (),
             include_unfinished: bool = False) -> str:
    """The table, its legend, and the runs the cells leave out (or, with include_unfinished, count though unfinished)."""
    cell = lambda c: c.replace("|", r"\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    counted = "all runs that logged an epoch, unfinished ones too" if include_unfinished else "its finished runs"
    lines += [
        "",
        f"Cells: median [min, max] over {counted} of a group; `-`: none. Threshold columns: the first epoch at "
        "which train/acc >= T or nc/nc1 <= T; `never` = a run never got there within its epochs (ranked after every "
        "epoch); a bare `never` = no run did.",
    ]
    if others:
        title = "Unfinished or failed runs, counted" if include_unfinished else \
            "Not counted (unfinished or failed; --include-unfinished adds the unfinished epochs)"
        lines += ["", f"{title}:", *(f"- {r.describe()}" for r in others)]
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
    header = ["group", "runs", "runs_finished", "runs_total"]
    for name, _ in spread_cols:
        header += [f"{name}_median", f"{name}_min", f"{name}_max"] + ([f"{name}_reached"] if name in reached else [])
    header.append("solver_ms_per_step")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for s in summaries:
            row: list[object] = [s.label, s.n_runs, s.n_finished, s.n_total]
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
