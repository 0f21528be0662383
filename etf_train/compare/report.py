"""etf-compare's tables: the markdown table with its legend, and the CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from .runs import RecordedRun
from .setting import readable
from .speedup import Speedup
from .stats import EVAL_ACC, NC1, TEST_ACC, TRAIN_ACC, GroupSummary, Spread, Threshold, tag_label, tag_slug


def _runs_cell(s: GroupSummary) -> str:
    """`3/5`, or `3/5 (+2 unfinished counted)` with --include-unfinished (unfinished or failed)."""
    extra = s.n_runs - s.n_finished
    return f"{s.n_finished}/{s.n_total}" + (f" (+{extra} unfinished counted)" if extra else "")


def table(summaries: Sequence[GroupSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows (thresholds and final tags taken from the summaries, which share them)."""
    first = summaries[0]
    header = (
        ["group", "runs finished", "epochs"]
        + [t.header for t in first.reached]
        + [f"final {tag_label(tag)} %" for tag in first.finals]
        + ["solver ms/step"]
    )
    rows = [
        [s.label, _runs_cell(s), s.epochs.format("g")]
        + [sp.format("g") for sp in s.reached.values()]
        + [sp.format(".2f") for sp in s.finals.values()]
        + [s.solver_ms.format(".3f")]
        for s in summaries
    ]
    return header, rows


def notes(acc_tag: str) -> list[str]:
    """What etf-compare's columns measure, below its table."""
    during = (
        f" {TRAIN_ACC} is measured during training, as the weights change (nearest_etf: with a classifier "
        "fitted to running means that include the batch), which flatters early epochs."
        if acc_tag == TRAIN_ACC
        else ""
    )
    return [
        (
            f"{EVAL_ACC} (eval-mode accuracy over the un-augmented train set) and the NC metrics are logged every "
            "metrics.every_n_epochs epochs and at the last: their threshold epochs have that interval as resolution; "
            f"{TRAIN_ACC} and test/acc are logged every epoch.{during}"
        ),
        "solver ms/step: per run the mean solver/ms without its first epoch (warm-up), median [min, max] over runs.",
    ]


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    cell = lambda c: c.replace("|", r"\|")  # noqa: E731
    return [
        "| " + " | ".join(map(cell, header)) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(map(cell, row)) + " |" for row in rows),
    ]


def speedup_table(
    summaries: dict[str, GroupSummary],
    baseline: str,
    limits: Sequence[Threshold],
    speed: dict[str, dict[Threshold, Speedup]],
) -> list[str]:
    """Per group and threshold, the speed-up over the baseline, with how it was paired."""
    header = ["group", "paired by seed"] + [t.header for t in limits]
    rows = []
    for label, s in summaries.items():
        if label == baseline or not s.n_runs:
            continue
        first = speed[label][limits[0]] if limits else None
        pairing = "-" if first is None else f"{first.of} seeds" if first.paired else "no: ratio of medians"
        rows.append([label, pairing] + [speed[label][t].format() for t in limits])
    return [
        f"Speed-up over `{baseline}`: its epochs / the group's epochs at each threshold (> 1: sooner), median "
        "[min, max] over the seeds both ran and both got there with (etf-train starts every head of a seed from "
        "the same backbone); groups without a seed in common: the ratio of median epochs, with the range of "
        "min / max run pairs; `-`: no pair got there.",
        "",
        *md_table(header, rows),
    ]


def compact(
    summaries: dict[str, GroupSummary],
    baseline: str | None,
    limits: Sequence[Threshold],
    speed: dict[str, dict[Threshold, Speedup]],
    full: str,
    width: int = 120,
) -> list[str]:
    """The terminal's table: readable group, runs, a few threshold columns (median epoch, and the speed-up over the
    baseline), the final test accuracy; columns are dropped from the end of the list until it fits `width`."""

    def deepest(ts: list[Threshold]) -> list[Threshold]:  # the last threshold some group's median reaches
        reached = [t for t in ts if any(math.isfinite(s.reached[t].median) for s in summaries.values() if s.n_runs)]
        return reached[-1:] or ts[:1]

    nc1 = [t for t in limits if t.tag == NC1]
    train = [t for t in limits if t.tag not in (NC1, TEST_ACC)]
    test = [t for t in limits if t.tag == TEST_ACC]
    chosen = list(dict.fromkeys(nc1[:1] + deepest(nc1) + deepest(train) + deepest(test) + nc1[len(nc1) // 2 :][:1]))
    order = [t for t in limits if t in chosen]

    def cell(label: str, t: Threshold) -> str:
        epoch = summaries[label].reached[t]
        text = "-" if not epoch.values else "never" if math.isinf(epoch.median) else f"{epoch.median:g}"
        ratio = speed.get(label, {}).get(t)
        return text + (f" ({ratio.median:.2f}x)" if ratio is not None and ratio.n else "")

    labels = [label for label, s in summaries.items() if s.n_runs]
    for n_cols in range(len(order), -1, -1):
        cols = [t for t in order if t in chosen[:n_cols]]
        header = (
            ["group", "runs"]
            + [t.header.replace("(measured during training)", "(training)") for t in cols]
            + ["final test/acc %"]
        )
        rows = [
            [readable(label)[:40], _runs_cell(summaries[label])]
            + [cell(label, t) for t in cols]
            + [summaries[label].finals[TEST_ACC].format(".2f").split(" [")[0]]
            for label in labels
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        if sum(widths) + 2 * (len(widths) - 1) <= width or n_cols == 0:
            break
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    note = "median epoch; (x): speed-up over the baseline" if baseline else "median epoch"
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows), f"({note}; full table: {full})"]


def markdown(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    others: Sequence[RecordedRun],
    include_unfinished: bool,
    notes: Sequence[str],
    warnings: Sequence[str],
    intro: Sequence[str],
    after: Sequence[str],
) -> str:
    """`intro` (the answer and the setting), the table, `after` it (the speed-ups), the warnings (what the table
    cannot show: pooled or unlike settings; also on stderr, but the file is what gets kept), its legend (the cell
    notation, then `notes`), and the runs that are not finished: counted up to their last epoch with
    include_unfinished, or left out."""
    lines = [*intro, *([""] if intro else []), *md_table(header, rows)]
    if after:
        lines += ["", *after]
    if warnings:
        lines += ["", "**Warnings** (read the table with them):", *(f"- {w}" for w in warnings)]
    counted = "all runs that logged an epoch, unfinished ones too" if include_unfinished else "its finished runs"
    lines += [
        "",
        (
            f"Cells: median [min, max] over {counted} of a group; `-`: none. Threshold columns: the first logged epoch "
            "at which the tag >= T (accuracies) or <= T (NC1); `never` = a run never got there within its epochs "
            "(ranked after every epoch); a bare `never` = no run did."
        ),
        *notes,
    ]
    counted_too = [r for r in others if r.included(include_unfinished)]
    left_out = [r for r in others if not r.included(include_unfinished)]
    if counted_too:
        lines += [
            "",
            "Unfinished or failed runs, counted up to their last logged epoch:",
            *(f"- {r.describe()}" for r in counted_too),
        ]
    if left_out:
        title = (
            "Not counted (no epoch logged)"
            if include_unfinished
            else "Not counted (unfinished or failed; --include-unfinished adds the epochs they logged)"
        )
        lines += ["", f"{title}:", *(f"- {r.describe()}" for r in left_out)]
    return "\n".join(lines) + "\n"


def write_csv(
    path: Path,
    summaries: Sequence[GroupSummary],
    speed: dict[str, dict[Threshold, Speedup]] | None = None,
) -> None:
    """Numbers unformatted: median/min/max columns per cell (empty where no run has the number), `inf` = never,
    `_reached` = runs that got there; with `speed`, `speedup_<threshold>_median/_min/_max/_pairs` over the baseline
    (empty for the baseline itself and where no pair got there)."""
    first = summaries[0]
    spread_cols: list[tuple[str, Callable[[GroupSummary], Spread]]] = (
        [("epochs", lambda s: s.epochs)]
        + [(t.column, lambda s, t=t: s.reached[t]) for t in first.reached]
        + [(f"final_{tag_slug(tag)}", lambda s, tag=tag: s.finals[tag]) for tag in first.finals]
        + [("solver_ms_per_step", lambda s: s.solver_ms)]
    )
    reached = {t.column for t in first.reached}
    header = ["group", "runs", "runs_finished", "runs_total"]
    for name, _ in spread_cols:
        header += [f"{name}_median", f"{name}_min", f"{name}_max"] + ([f"{name}_reached"] if name in reached else [])
    limits = list(first.reached) if speed else []
    for t in limits:
        name = t.column.replace("epochs_to_", "speedup_", 1)
        header += [f"{name}_median", f"{name}_min", f"{name}_max", f"{name}_pairs"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for s in summaries:
            row: list[object] = [s.label, s.n_runs, s.n_finished, s.n_total]
            for name, get in spread_cols:
                sp = get(s)
                row += [sp.median, sp.min, sp.max] if sp.values else ["", "", ""]
                row += [sp.reached] if name in reached else []
            for t in limits:
                x = (speed or {}).get(s.label, {}).get(t)
                row += [x.median, x.low, x.high, x.n] if x is not None and x.n else ["", "", "", ""]
            writer.writerow(row)
