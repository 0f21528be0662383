"""How much sooner: each group's threshold epochs against a baseline group's (paired by seed where the runs pair),
where two groups' median curves cross, and NC1 thresholds that follow the data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EtfTrainError
from .runs import RecordedRun, config_text
from .stats import NC1, EpochStats, GroupSummary, Threshold, epoch_stats

DEFAULT_NC1 = (1.0, 0.1, 0.01)  # always shown; deeper decades when every group gets there
MAX_DECADES = 12


@dataclass(frozen=True)
class Speedup:
    """Baseline epochs / group epochs at one threshold: > 1 means the group got there sooner.

    Paired: one ratio per seed that both groups ran and both reached the threshold with (etf-train starts every head
    of a seed from the same backbone); median, min and max over those seeds. Unpaired (no seed in common): the ratio
    of the median epochs, with the range min(baseline) / max(group) .. max(baseline) / min(group)."""

    median: float
    low: float
    high: float
    n: int  # ratios counted (paired: seeds where both got there; unpaired: runs of the group that got there)
    of: int  # seeds in common (paired) or runs of the group (unpaired)
    paired: bool

    def format(self) -> str:
        """`3.50x [3.00, 4.00]`, `-` where no run pair got there."""
        if not self.n:
            return "-"
        spread = "" if self.low == self.high else f" [{self.low:.2f}, {self.high:.2f}]"
        return f"{self.median:.2f}x{spread}"

    @property
    def basis(self) -> str:
        """`3 of 3 seeds paired` / `unpaired, 2 runs`."""
        return f"{self.n} of {self.of} seeds paired" if self.paired else f"unpaired, {self.n} of {self.of} runs"


def speedup(group: GroupSummary, base: GroupSummary, t: Threshold) -> Speedup:
    g = dict(zip(group.seeds, group.reached[t].values))
    b = dict(zip(base.seeds, base.reached[t].values))
    common = [s for s in g if s is not None and s in b]
    if common:
        ratios = [b[s] / g[s] for s in common if math.isfinite(b[s]) and math.isfinite(g[s])]
        if not ratios:
            return Speedup(math.nan, math.nan, math.nan, 0, len(common), True)
        return Speedup(float(np.median(ratios)), min(ratios), max(ratios), len(ratios), len(common), True)
    gv = [v for v in group.reached[t].values if math.isfinite(v)]
    bv = [v for v in base.reached[t].values if math.isfinite(v)]
    if not gv or not bv:
        return Speedup(math.nan, math.nan, math.nan, 0, len(group.reached[t].values), False)
    return Speedup(
        float(np.median(bv) / np.median(gv)),
        min(bv) / max(gv),
        max(bv) / min(gv),
        len(gv),
        len(group.reached[t].values),
        False,
    )


def choose_baseline(groups: dict[str, list[RecordedRun]], requested: str | None) -> str | None:
    """The baseline group's label: --baseline (a label, or a part of exactly one label), else the one group of a
    learned head when there is exactly one (`head=learned` or a preset of it such as `head=learned_authors`)."""
    if requested is not None:
        if requested in groups:
            return requested
        matches = [label for label in groups if requested in label]
        if len(matches) == 1:
            return matches[0]
        what = "matches several groups" if matches else "matches no group"
        raise EtfTrainError(f"--baseline {requested!r} {what}; the groups: {'; '.join(groups)}")
    learned = [label for label, runs in groups.items() if runs and config_text(runs[0], "head.name") == "learned"]
    return learned[0] if len(learned) == 1 else None


def nc1_thresholds(groups: dict[str, list[RecordedRun]]) -> list[float]:
    """1, 0.1, 0.01 and every further decade that every group's median NC1 curve reaches (at most 1e-12)."""
    lows = [
        float(np.min(st.median))
        for runs in groups.values()
        if runs
        for st in [epoch_stats(runs, NC1)]
        if st.median.size
    ]
    lowest = max(lows) if lows else 1.0
    deepest = len(DEFAULT_NC1) - 1
    if lowest > 0:  # float32 steps of the logged values: 1e-3 is stored as 0.0010000000475
        deepest = max(deepest, min(MAX_DECADES, math.floor(-math.log10(lowest) + 1e-6)))
    return [10.0**-k for k in range(deepest + 1)]


@dataclass(frozen=True)
class Crossing:
    """Where the order of two median curves changes, after both have started to converge."""

    epoch: int
    below: str  # the label of the group whose curve goes below the other's there


def crossings(a: tuple[str, EpochStats], b: tuple[str, EpochStats], start: float) -> list[Crossing]:
    """The epochs at which the group below the other changes, on the epochs both logged, from the first epoch where
    either median is <= start (before it, curves that both sit near their initial value cross for nothing)."""
    (la, sa), (lb, sb) = a, b
    common, ia, ib = np.intersect1d(sa.epochs, sb.epochs, return_indices=True)
    diff = sa.median[ia] - sb.median[ib]
    began = np.flatnonzero(np.minimum(sa.median[ia], sb.median[ib]) <= start)
    out, sign = [], 0.0
    for epoch, d in zip(common[began[0] :] if began.size else [], diff[began[0] :] if began.size else []):
        s = float(np.sign(d))
        if s == 0 or math.isnan(s):
            continue
        if sign and s != sign:
            out.append(Crossing(int(epoch), la if s < 0 else lb))
        sign = s
    return out


def describe_crossings(found: Sequence[Crossing], labels: tuple[str, str], tag_name: str) -> str | None:
    """`learned falls below nearest_etf in NC1 from epoch 190` (the last change; how many there were)."""
    if not found:
        return None
    last = found[-1]
    above = labels[1] if last.below == labels[0] else labels[0]
    text = f"{last.below} falls below {above} in {tag_name} from epoch {last.epoch}"
    return text + (f" (the order changed {len(found)} times)" if len(found) > 1 else "")
