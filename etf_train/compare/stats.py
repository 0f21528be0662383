"""The numbers of etf-compare's table: per-run values (threshold epochs, finals) and their spread over a group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EtfTrainError
from ..rundir import Curve
from .runs import Run

TRAIN_ACC, TEST_ACC, NC1, SOLVER_MS = "train/acc", "test/acc", "nc/nc1", "solver/ms"


@dataclass(frozen=True)
class Spread:
    """One value per run; `inf` marks a threshold the run never reached."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.values)) if self.values else math.nan

    @property
    def min(self) -> float:
        return min(self.values, default=math.nan)

    @property
    def max(self) -> float:
        return max(self.values, default=math.nan)

    @property
    def reached(self) -> int:
        return sum(math.isfinite(v) for v in self.values)

    def format(self, spec: str) -> str:
        """`median [min, max]`, with `never` for inf and a bare `never` when no run got there; `-` for no runs."""
        if not self.values:
            return "-"
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
    n_runs: int  # runs the cells summarise
    n_finished: int
    n_total: int  # runs of the group, whatever their state
    epochs: Spread
    acc_epochs: dict[float, Spread]  # threshold -> epochs to train/acc >= threshold
    nc1_epochs: dict[float, Spread]  # threshold -> epochs to nc/nc1 <= threshold
    final_train_acc: Spread
    final_test_acc: Spread
    solver_ms: float | None


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
    label: str, group: Sequence[Run], acc_thresholds: Sequence[float], nc1_thresholds: Sequence[float],
    include_unfinished: bool = False,
) -> GroupSummary:
    """One table row: threshold epochs, final accuracies and solver time over the group's finished runs (all of
    its runs that logged an epoch, with include_unfinished)."""
    runs = [r for r in group if r.counted or (include_unfinished and r.epochs)]
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
        n_finished=sum(r.counted for r in group),
        n_total=len(group),
        epochs=Spread(tuple(float(s[-1]) for s, _ in train)),
        acc_epochs={t: Spread(tuple(first_epoch(c, t, above=True) for c in train)) for t in acc_thresholds},
        nc1_epochs={t: Spread(tuple(first_epoch(c, t, above=False) for c in nc1)) for t in nc1_thresholds},
        final_train_acc=Spread(tuple(float(v[-1]) for _, v in train)),
        final_test_acc=Spread(tuple(float(v[-1]) for _, v in test)),
        solver_ms=float(np.mean([r.scalars[SOLVER_MS][1].mean() for r in with_solver])) if with_solver else None,
    )
