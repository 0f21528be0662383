"""etf-compare's analysis, without writing anything: the runs, their groups and warnings, the thresholds, each
group's summary and speed-ups over the baseline, and the answer in words (what `etf-compare` writes and prints,
and `etf-train -m` prints when a sweep ends)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import EtfTrainError
from ..tags import EQUINORM_H, NC3, TRAIN_LOSS
from .answer import answer, threshold_words
from .plot import check_metrics
from .report import compact
from .runs import (
    RecordedRun,
    check_datasets,
    code_versions,
    group_runs,
    late_starts,
    load_runs,
    pooled_settings,
    unlike_groups,
    warn,
)
from .setting import readable, reproduce, setting
from .speedup import Speedup, choose_baseline, crossings, describe_crossings, nc1_thresholds, speedup
from .stats import NC1, TEST_ACC, GroupSummary, Threshold, epoch_stats, summarize, tag_label, thresholds
from .steps import step_counts

OTHER_METRICS = (TEST_ACC, TRAIN_LOSS, NC1, NC3, EQUINORM_H)  # after the --acc-tag panel


@dataclass
class Analysis:
    runs: list[RecordedRun]
    groups: dict[str, list[RecordedRun]]  # every run, by group label
    drawn: dict[str, list[RecordedRun]]  # the runs each group counts (all groups, maybe empty)
    warnings: list[str]
    metrics: list[str]
    baseline: str | None
    nc1: list[float]
    limits: list[Threshold]
    summaries: dict[str, GroupSummary]
    speed: dict[str, dict[Threshold, Speedup]]
    intro: list[str]  # the answer, the setting, the thresholds, the command that reproduces the runs

    def terminal(self, full: str = "comparison.md") -> list[str]:
        return [*self.intro, "", *compact(self.summaries, self.baseline, self.limits, self.speed, full)]


MAX_DPI = 1200  # drawing memory grows with dpi squared: six panels at 1200 dpi take 0.6 GB


def check_options(
    acc: Sequence[float], test_acc: Sequence[float], nc1: Sequence[float] | None, dpi: int, port: int | None
) -> None:
    for option, values in (("--acc-thresholds", acc), ("--test-acc-thresholds", test_acc)):
        for t in values:
            if not 1.0 < t <= 100.0:
                hint = f" (accuracies are in percent: {t * 100:g}?)" if 0 < t <= 1 else ""
                raise EtfTrainError(f"{option} must lie in (1, 100], got {t:g}{hint}")
    for t in nc1 or ():
        if not t > 0:
            raise EtfTrainError(f"--nc1-thresholds must be positive, got {t:g}")
    if not 1 <= dpi <= MAX_DPI:
        raise EtfTrainError(f"--dpi must lie in 1..{MAX_DPI}, got {dpi}")
    if port is not None and not 0 <= port <= 65535:
        raise EtfTrainError(f"--port must lie in 0..65535, got {port}")


def analyse(args: argparse.Namespace) -> Analysis:
    test_acc = args.acc_thresholds if args.test_acc_thresholds is None else args.test_acc_thresholds
    metrics = args.metrics or [args.acc_tag, *OTHER_METRICS]
    check_options(args.acc_thresholds, test_acc, args.nc1_thresholds, args.dpi, args.port)
    runs = load_runs(args.folders)
    if not args.allow_mixed:
        check_datasets(runs)
    if not any(r.included(args.include_unfinished) for r in runs):
        raise EtfTrainError(
            f"no finished runs under {', '.join(map(str, args.folders))} ({len(runs)} unfinished or "
            "failed); --include-unfinished compares them up to their last epoch"
        )
    groups = group_runs(runs, args.group_by)  # labelled over all runs: the table and the legend name groups alike
    drawn = {label: [r for r in rs if r.included(args.include_unfinished)] for label, rs in groups.items()}
    counted = {label: rs for label, rs in drawn.items() if rs}
    warnings = (
        pooled_settings(counted)
        + unlike_groups(counted, args.group_by)
        + step_counts(counted)
        + late_starts(counted)
        + code_versions(counted)
    )
    for message in warnings:
        warn(message)
    baseline = choose_baseline(counted, args.baseline)
    nc1 = nc1_thresholds(counted) if args.nc1_thresholds is None else list(args.nc1_thresholds)
    limits = thresholds(args.acc_tag, args.acc_thresholds, test_acc, nc1)
    summaries = {
        label: summarize(label, rs, limits, args.acc_tag, args.include_unfinished) for label, rs in groups.items()
    }
    speed = {
        label: {t: speedup(s, summaries[baseline], t) for t in limits}
        for label, s in summaries.items()
        if baseline is not None and label != baseline
    }
    check_metrics([r for rs in counted.values() for r in rs], metrics)
    every = [r for rs in counted.values() for r in rs]
    command = reproduce(every)
    intro = [
        *answer(summaries, baseline, limits, speed, _crossings(counted, baseline, nc1)),
        "",
        f"Setting: {setting(every)}.",
        threshold_words(limits, args.nc1_thresholds is None),
    ]
    intro += [f"Reproduce: `{command}`"] if command else []
    return Analysis(runs, groups, drawn, warnings, metrics, baseline, nc1, limits, summaries, speed, intro)


def _crossings(groups: dict[str, list[RecordedRun]], baseline: str | None, nc1: Sequence[float]) -> dict[str, str]:
    """Per group, where its median NC1 curve and the baseline's change order after the first NC1 threshold."""
    if baseline is None or not nc1:
        return {}
    base = (readable(baseline), epoch_stats(groups[baseline], NC1))
    out = {}
    for label, runs in groups.items():
        if label != baseline:
            mine = (readable(label), epoch_stats(runs, NC1))
            sentence = describe_crossings(crossings(mine, base, max(nc1)), (mine[0], base[0]), tag_label(NC1))
            if sentence:
                out[label] = sentence
    return out
