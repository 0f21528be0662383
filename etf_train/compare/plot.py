"""etf-compare's figure: one panel per metric, per group the per-epoch median over runs and a min-max band.

Built on a bare matplotlib Figure with the Agg canvas (no pyplot global state); `figure` returns it, so tests read
titles, labels and line styles from the object rather than from pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..errors import EtfTrainError
from ..tags import TITLES, YLABELS
from .runs import RecordedRun, config_text
from .setting import headline, readable
from .stats import NC1, epoch_stats, tag_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LOG_SCALE_DECADES = 1.5
FORMATS = ("png", "pdf", "svg")
# Okabe & Ito's colour-blind-safe palette, yellow last (faint on white); line styles and markers vary with it, so
# groups differ in more than hue.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# Runs from before the loss config group trained with cross-entropy and have no loss.name.
LOSS_NAMES = {"ce": "cross-entropy", "-": "cross-entropy"}


class Style(NamedTuple):
    color: str
    linestyle: str | tuple
    marker: str


def style(i: int) -> Style:
    return Style(COLORS[i % len(COLORS)], LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])


def check_metrics(runs: Sequence[RecordedRun], metrics: Sequence[str]) -> None:
    """Each plotted tag must exist in some run (a group without it just has no line)."""
    tags = {tag for r in runs for tag in r.scalars}
    for tag in metrics:
        if tag not in tags:
            raise EtfTrainError(f"no run has scalar '{tag}' (from --metrics); available: {', '.join(sorted(tags))}")


def spans_decades(values: np.ndarray, decades: float = LOG_SCALE_DECADES) -> bool:
    """True when all finite values are positive and max/min > 10**decades (worth a log axis)."""
    v = values[np.isfinite(values)]
    return v.size > 0 and bool(np.all(v > 0)) and math.log10(v.max() / v.min()) > decades


def title(groups: dict[str, list[RecordedRun]]) -> str:
    """What the runs share (setting.headline: dataset, K, d, backbone, optimiser, epochs, seeds), and the band."""
    return f"{headline(groups)} · line = median, band = min-max over seeds"


def is_accuracy(tag: str) -> bool:
    """test/acc, train/eval_acc, test/acc_top5, test/acc_few, test/acc_class/<name>: percentages, on a linear axis."""
    return re.search(r"(^|/|_)acc(_|/|$)", tag) is not None


def ylabel(tag: str, loss: str) -> str:
    if tag in YLABELS:
        return YLABELS[tag]
    if is_accuracy(tag):
        return "accuracy (%)"
    return loss if tag.endswith("loss") else tag.rsplit("/", 1)[-1]


def _loss_name(runs: Sequence[RecordedRun]) -> str:
    """`cross-entropy`, `mse loss`, or both names joined when the runs train with different losses."""
    names = sorted({config_text(r, "loss.name") for r in runs})
    return " / ".join(dict.fromkeys(LOSS_NAMES.get(n, f"{n} loss") for n in names))


def _panel(
    ax: Axes,
    tag: str,
    groups: dict[str, list[RecordedRun]],
    loss: str,
    lines_at: Sequence[float],
    per_seed: bool,
    marked: set[int],
    xlabel: str,
) -> None:
    """One metric: per group the median and min-max band (and each run thinly with per_seed); dotted horizontal
    lines at `lines_at` (the NC1 thresholds of the table); the groups whose curves carry markers go into `marked`."""
    from matplotlib.ticker import MaxNLocator

    seen, medians = [], []
    for i, runs in enumerate(groups.values()):
        st = epoch_stats(runs, tag)
        if st.epochs.size == 0:
            continue  # e.g. solver/ms for a head without a solver
        s = style(i)
        # logged at fewer epochs than trained (every few epochs, and the last), or one point, which a line cannot show
        sparse = st.epochs.size < max(r.epochs for r in runs) or st.epochs.size == 1
        marked.update([i] if sparse else [])
        ax.plot(
            st.epochs,
            st.median,
            color=s.color,
            linestyle=s.linestyle,
            marker=s.marker if sparse else "None",
            markersize=4,
            lw=1.5,
        )
        ax.fill_between(st.epochs, st.min, st.max, color=s.color, alpha=0.15, lw=0)
        if per_seed:
            for run in runs:
                if tag in run.scalars:
                    ax.plot(*run.scalars[tag], color=s.color, lw=0.5, alpha=0.45)
        seen += [st.min, st.max]
        medians.append(st.median)
    if not is_accuracy(tag) and seen and spans_decades(np.concatenate(seen)):  # accuracies (%) stay linear
        ax.set_yscale("log")
    span = np.concatenate(seen) if seen else np.array([])
    span = span[np.isfinite(span)]
    for value in lines_at:  # within the curves' range only: a line far below them would squash them
        if span.size and span.min() <= value <= span.max():
            ax.axhline(value, color="0.5", lw=0.7, ls=":", zorder=0)
    if is_accuracy(tag) and medians:  # the range the medians span, not 0-100 % (UFM's curves sit at 100 %)
        lo, hi = float(np.nanmin(np.concatenate(medians))), float(np.nanmax(np.concatenate(seen)))
        pad = max(0.5, 0.05 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi) + pad)
    ax.set_title(TITLES.get(tag, tag_label(tag)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel(tag, loss))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def figure(
    groups: dict[str, list[RecordedRun]],
    metrics: Sequence[str],
    totals: dict[str, int] | None = None,
    warnings: int = 0,
    nc1_lines: Sequence[float] = (),
    per_seed: bool = False,
    xlabel: str = "epoch",
    described: dict[str, list[RecordedRun]] | None = None,
) -> Figure:
    """One panel per metric (each in some run: check_metrics), a title saying what the runs share, and a legend
    `<group> (n=<runs>)` below the panels, groups named readably: `n=3, 1 unfinished` when unfinished runs are
    drawn, `n=2 of 5` when `totals` (runs per group, drawn or not) says some were left out, `n=0 of 2, not drawn`
    for a group with none; with warnings, the title points to them. nc1_lines: thresholds marked on the NC1 panel;
    per_seed: each run as a thin line too. Legend entries carry a marker only where that group's curves do.
    described: the runs the title describes when `groups` are drawn on another x axis (over optimiser steps, whose
    last step is no epoch count); default: `groups`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows + 0.3 * math.ceil(len(groups) / 3) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly, no pyplot global state
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    loss = _loss_name([r for rs in groups.values() for r in rs])
    marked: set[int] = set()
    for ax, tag in zip(axes, metrics):
        _panel(ax, tag, groups, loss, nc1_lines if tag == NC1 else (), per_seed, marked, xlabel)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles = [
        Line2D(
            [],
            [],
            color=s.color,
            linestyle=s.linestyle,
            marker=s.marker if i in marked else "None",
            markersize=4,
            lw=1.5,
        )
        for i, s in enumerate(map(style, range(len(groups))))
    ]

    def label(name: str, runs: Sequence[RecordedRun]) -> str:
        total = (totals or {}).get(name, len(runs))
        unfinished = sum(not r.counted for r in runs)  # --include-unfinished: curves that stop early say so
        return (
            f"{readable(name)} (n={len(runs)}"
            + (f" of {total}" if total != len(runs) else "")
            + (f", {unfinished} unfinished" if unfinished else "")
            + (", not drawn" if not runs else "")
            + ")"
        )

    labels = [label(name, runs) for name, runs in groups.items()]
    # as many legend columns as the longest label leaves room for (about 0.075 in per character, small font)
    fit = int(fig.get_figwidth() // (0.075 * max(map(len, labels)) + 0.6))
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=max(1, min(3, fit)),  # matplotlib keeps it to the number of entries
        fontsize="small",
        frameon=False,
    )
    warned = f"\n{warnings} warning{'s' * (warnings > 1)}: see comparison.md" if warnings else ""
    described = groups if described is None else described
    fig.suptitle(title({k: rs for k, rs in described.items() if rs}) + warned, fontsize="medium")
    return fig
