"""The answer first: a few sentences per group against the baseline, every number taken from the tables below them
(median threshold epochs, speed-ups, where median curves cross), then the setting they hold for."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .setting import readable
from .speedup import Speedup
from .stats import NC1, TEST_ACC, GroupSummary, Threshold, tag_label


def _sooner(ratio: float) -> str:
    """3.5 -> `3.50x sooner`, 0.5 -> `2.00x later`."""
    if ratio == 1:
        return "at the same epoch as"
    return f"{ratio:.2f}x sooner than" if ratio > 1 else f"{1 / ratio:.2f}x later than"


def _epochs(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:g}"


def _against(
    group: GroupSummary,
    base: GroupSummary,
    shared: Sequence[Threshold],
    speed: dict[Threshold, Speedup],
    first_part: bool,
) -> str:
    """`reaches NC1 <= 1 3.50x sooner than learned (4 vs 14 epochs, median; 3 of 3 seeds paired); at NC1 <= 1e-06,
    1.14x sooner (164 vs 187)` over the thresholds both groups' medians reach (the first and the last of them)."""
    # the first threshold where the groups differ (NC1 <= 1 is often met by every head in epoch 1), and the deepest
    first, last = next((t for t in shared if speed[t].median != 1), shared[0]), shared[-1]
    s = speed[first]
    verb = "reaches " if first_part else ""
    text = (
        f"{verb}{first.header} {_sooner(s.median)} {readable(base.label)} "
        f"({_epochs(group.reached[first].median)} vs {_epochs(base.reached[first].median)} epochs, median; {s.basis})"
    )
    if last != first:
        s = speed[last]
        text += (
            f"; at {last.header}, {_sooner(s.median).removesuffix(' than').removesuffix(' as')} "
            f"({_epochs(group.reached[last].median)} vs {_epochs(base.reached[last].median)})"
        )
    return text


def _shared(group: GroupSummary, base: GroupSummary, limits: Sequence[Threshold], speed: dict) -> list[Threshold]:
    return [
        t
        for t in limits
        if math.isfinite(group.reached[t].median) and math.isfinite(base.reached[t].median) and speed[t].n
    ]


def _alone(group: GroupSummary, base: GroupSummary, limits: Sequence[Threshold]) -> str | None:
    """`reaches NC1 <= 0.001 (median epoch 40), which learned's median run never does`: the deepest threshold only
    one of the two gets to."""
    for t in reversed(limits):
        g, b = group.reached[t].median, base.reached[t].median
        if math.isfinite(g) != math.isfinite(b):
            who, other = (group, base) if math.isfinite(g) else (base, group)
            return (
                f"Only {readable(who.label)}'s median run reaches {t.header} (epoch {_epochs(who.reached[t].median)}), "
                f"{readable(other.label)}'s never does"
            )
    return None


def answer(
    summaries: dict[str, GroupSummary],
    baseline: str | None,
    limits: Sequence[Threshold],
    speed: dict[str, dict[Threshold, Speedup]],
    crossings: dict[str, str],
) -> list[str]:
    """Sentences, one paragraph per group: against the baseline where there is one, else the fastest group per
    threshold. `crossings`: per group label, the sentence on where its median NC1 curve and the baseline's cross."""
    nc1 = [t for t in limits if t.tag == NC1]
    acc = [t for t in limits if t.tag not in (NC1, TEST_ACC)]  # the train accuracy; test/acc is in the table
    if baseline is None:
        lines = ["No baseline group (one learned head, or --baseline GROUP): the fastest group per threshold."]
        for t in (nc1[:1] + nc1[-1:] if len(nc1) > 1 else nc1) + acc[-1:]:
            reached = {label: s.reached[t].median for label, s in summaries.items() if s.n_runs}
            best = min(reached.values(), default=math.inf)
            if math.isfinite(best):
                first = [readable(label) for label, e in reached.items() if e == best]
                who = f"{first[0]} first" if len(first) == 1 else f"{', '.join(first)} tie"
                lines.append(f"- {t.header}: {who} (median epoch {_epochs(best)})")
        return lines
    base = summaries[baseline]
    lines = [f"Against the baseline {readable(baseline)} (baseline epochs / group epochs):"]
    for label, group in summaries.items():
        if label == baseline or not group.n_runs:
            continue
        parts = []
        for kind in (nc1, acc):
            shared = _shared(group, base, kind, speed[label])
            if shared:
                parts.append(_against(group, base, shared if kind is nc1 else shared[-1:], speed[label], not parts))
        alone = _alone(group, base, nc1)
        sentence = f"- {readable(label)} " + ("; ".join(parts) if parts else "shares no threshold with the baseline")
        sentence += "." + (f" {alone}." if alone else "")
        if label in crossings:
            sentence += f" Median curves cross: {crossings[label]}."
        lines.append(sentence)
    return lines


def threshold_words(limits: Sequence[Threshold], chosen_by_data: bool) -> str:
    """Which NC1 thresholds the table uses and why."""
    values = ", ".join(f"{t.value:g}" for t in limits if t.tag == NC1)
    why = (
        "the default 1, 0.1, 0.01 and every further decade that every group's median curve reaches"
        if chosen_by_data
        else "from --nc1-thresholds"
    )
    return f"{tag_label(NC1)} thresholds: {values} ({why})." if values else ""
