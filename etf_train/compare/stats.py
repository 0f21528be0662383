"""The numbers of etf-compare's table: per-run values (threshold epochs, finals) and their spread over a group."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from ..errors import EtfTrainError
from ..rundir import Curve
from ..tags import EVAL_ACC, NC1, SOLVER_MS, TEST_ACC, TRAIN_ACC
from .runs import RecordedRun

ACC_TAGS = (EVAL_ACC, TRAIN_ACC)  # what --acc-tag may choose
# How a tag is named in the table (the CSV slugifies it), where the tag alone would mislead or is long.
LABELS = {TRAIN_ACC: "train/acc (measured during training)", NC1: "NC1"}
# Why a run must hold a tag, for the error when it does not.
NEEDED = {
    EVAL_ACC: f"eval-mode train accuracy, logged with the NC metrics; for runs from before it was logged pass "
    f"--acc-tag {TRAIN_ACC} (the accuracy measured during training)",
    NC1: "needed by --nc1-thresholds; pass the option with no values to skip",
}


def tag_label(tag: str) -> str:
    return LABELS.get(tag, tag)


def tag_slug(tag: str) -> str:
    """A tag's name in CSV columns: `train_eval_acc`, `train_acc_measured_during_training`, `nc1`."""
    return re.sub(r"\W+", "_", tag_label(tag).lower()).strip("_")


@dataclass(frozen=True)
class Threshold:
    """A run reaches it at the first *logged* epoch where tag >= value (above) or tag <= value (not above)."""

    tag: str
    value: float
    above: bool

    @property
    def header(self) -> str:
        unit = "%" if self.tag.endswith("acc") else ""
        return f"{tag_label(self.tag)} {'>=' if self.above else '<='} {self.value:g}{unit}"

    @property
    def column(self) -> str:
        return f"epochs_to_{tag_slug(self.tag)}_{'ge' if self.above else 'le'}_{self.value:g}"


def thresholds(acc_tag: str, acc: Sequence[float], test_acc: Sequence[float], nc1: Sequence[float]) -> list[Threshold]:
    return (
        [Threshold(acc_tag, t, True) for t in acc]
        + [Threshold(TEST_ACC, t, True) for t in test_acc]
        + [Threshold(NC1, t, False) for t in nc1]
    )


@dataclass(frozen=True)
class Spread:
    """One value per run; `inf` marks a threshold the run never reached."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.values)) if self.values else math.nan

    @property
    def min(self) -> float:
        return float(np.min(self.values)) if self.values else math.nan  # NaN propagates, whatever the runs' order

    @property
    def max(self) -> float:
        return float(np.max(self.values)) if self.values else math.nan

    @property
    def reached(self) -> int:
        return sum(math.isfinite(v) for v in self.values)

    def format(self, spec: str) -> str:
        """`median [min, max]`, with `never` for inf and a bare `never` when no run got there; `-` for no runs;
        `degenerate` when a run's value is NaN (an NC metric of features without between-class spread is undefined,
        never 0)."""
        if not self.values:
            return "-"
        if all(v == math.inf for v in self.values):
            return "never"
        if any(math.isnan(v) for v in self.values):  # NaN propagates to the median, min and max alike
            return "degenerate"
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
    n_runs: int  # runs the cells summarise
    n_finished: int
    n_total: int  # runs of the group, whatever their state
    epochs: Spread
    reached: dict[Threshold, Spread]  # epochs to each threshold
    finals: dict[str, Spread]  # tag -> its value at each run's last logged epoch
    solver_ms: Spread  # each run's mean solver/ms after its first (warm-up) epoch; no values: no solver
    seeds: tuple = ()  # each run's seed (None where the record has none), in the order of the spreads' values


def first_epoch(curve: Curve, threshold: float, above: bool) -> float:
    """The first step with value >= threshold (above) or <= threshold (not above); inf if none."""
    steps, values = curve
    hit = np.flatnonzero(values >= threshold if above else values <= threshold)
    return float(steps[hit[0]]) if hit.size else math.inf


def epoch_stats(runs: Sequence[RecordedRun], tag: str) -> EpochStats:
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


def _check_tags(run: RecordedRun, tags: Sequence[str]) -> None:
    for tag in tags:
        if tag not in run.scalars:
            raise EtfTrainError(f"run {run.path} has no scalar '{tag}' ({NEEDED.get(tag, 'needed by the table')})")


def solver_ms(curve: Curve) -> float:
    """The run's mean solver time per step without its first epoch, whose step includes warm-up (compilation,
    allocation); a one-epoch run keeps it."""
    values = curve[1]
    return float(values[1:].mean() if values.size > 1 else values.mean())


def summarize(
    label: str,
    group: Sequence[RecordedRun],
    limits: Sequence[Threshold],
    acc_tag: str,
    include_unfinished: bool = False,
) -> GroupSummary:
    """One table row: threshold epochs, final accuracies and solver time over the group's finished runs (all of
    its runs that logged an epoch, with include_unfinished)."""
    runs = [r for r in group if r.included(include_unfinished)]
    for r in runs:
        _check_tags(r, list(dict.fromkeys([acc_tag, TEST_ACC, *(t.tag for t in limits)])))
    with_solver = [r for r in runs if SOLVER_MS in r.scalars]
    for r in runs:
        if with_solver and SOLVER_MS not in r.scalars:
            raise EtfTrainError(f"run {r.path} has no scalar '{SOLVER_MS}' (other runs of group '{label}' log it)")
    return GroupSummary(
        label=label,
        n_runs=len(runs),
        n_finished=sum(r.counted for r in group),
        n_total=len(group),
        epochs=Spread(tuple(float(r.epochs) for r in runs)),
        reached={t: Spread(tuple(first_epoch(r.scalars[t.tag], t.value, t.above) for r in runs)) for t in limits},
        finals={tag: Spread(tuple(float(r.scalars[tag][1][-1]) for r in runs)) for tag in (acc_tag, TEST_ACC)},
        solver_ms=Spread(tuple(solver_ms(r.scalars[SOLVER_MS]) for r in with_solver)),
        seeds=tuple(OmegaConf.select(r.config, "seed", default=None) for r in runs),
    )
