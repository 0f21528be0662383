"""etf-compare's small pieces at their boundaries (issue 30's mutation run left these untested): the speed-up's text
and its no-data cases, where two median curves cross, the answer's words for a ratio, and a list of runs named in a
message. Expected values are written out here, not computed with the package's helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from etf_train.compare.answer import _epochs, _sooner
from etf_train.compare.speedup import Crossing, Speedup, crossings, describe_crossings, speedup
from etf_train.compare.stats import NC1, EpochStats, GroupSummary, Spread, Threshold, solver_ms
from etf_train.compare.steps import _named

T = Threshold(NC1, 0.1, False)


def group(label: str, seeds: tuple, reached: tuple) -> GroupSummary:
    """A group whose runs (one per seed) reached T at these epochs (inf: never)."""
    empty = Spread(())
    n = len(reached)
    return GroupSummary(label, n, n, n, empty, {T: Spread(reached)}, {}, empty, seeds)


def test_a_speedup_reads_as_its_ratio_with_the_range_only_when_there_is_one():
    assert Speedup(3.5, 3.0, 4.0, 3, 3, True).format() == "3.50x [3.00, 4.00]"
    assert Speedup(3.5, 3.5, 3.5, 1, 3, True).format() == "3.50x"
    assert Speedup(math.nan, math.nan, math.nan, 0, 3, True).format() == "-"


def _fields(s: Speedup) -> tuple:
    return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in (*vars(s).values(),))


def test_a_speedup_without_a_pair_or_a_run_that_got_there():
    never = math.inf
    # paired: seeds 1 and 2 in common, neither pair has both finite
    s = speedup(group("g", (1, 2), (4.0, never)), group("b", (1, 2), (never, 9.0)), T)
    assert _fields(s) == ("nan", "nan", "nan", 0, 2, True)
    # unpaired (no seed in common): the group never got there in any of its 3 runs
    s = speedup(group("g", (1, 2, 3), (never, never, never)), group("b", (4,), (9.0,)), T)
    assert _fields(s) == ("nan", "nan", "nan", 0, 3, False)


def test_an_unpaired_speedup_is_the_ratio_of_medians_with_the_extreme_ratios_as_its_range():
    # group epochs 2, 4, inf (2 of 3 got there); baseline 6, 12
    s = speedup(group("g", (1, 2, 3), (2.0, 4.0, math.inf)), group("b", (7, 8), (6.0, 12.0)), T)
    assert _fields(s) == (9.0 / 3.0, 6.0 / 4.0, 12.0 / 2.0, 2, 3, False)


def curve(epochs, medians) -> EpochStats:
    m = np.asarray(medians, dtype=float)
    return EpochStats(np.asarray(epochs), m, m, m, np.ones(len(m), dtype=int))


def test_crossings_skip_ties_and_gaps_and_name_the_group_that_goes_below():
    epochs = [1, 2, 3, 4, 5, 6]
    a = curve(epochs, [0.9, 0.5, 0.4, 0.3, 0.2, 0.05])
    b = curve(epochs, [0.8, 0.4, 0.4, math.nan, 0.3, 0.1])
    # a - b: +, +, 0 (tie), nan (gap), -, -: one change, at epoch 5, where a goes below b
    assert crossings(("a", a), ("b", b), start=1.0) == [Crossing(5, "a")]
    assert crossings(("b", b), ("a", a), start=1.0) == [Crossing(5, "a")]
    # and back above at epoch 6
    c = curve(epochs, [0.9, 0.5, 0.4, 0.3, 0.2, 0.2])
    assert crossings(("c", c), ("b", b), start=1.0) == [Crossing(5, "c"), Crossing(6, "b")]


def test_crossings_count_only_once_a_curve_is_at_or_below_start():
    epochs = [1, 2, 3, 4]
    a = curve(epochs, [5.0, 3.0, 0.5, 0.2])
    b = curve(epochs, [4.0, 3.5, 0.6, 0.1])
    assert crossings(("a", a), ("b", b), start=1.0) == [Crossing(4, "b")]  # not the early swap at epoch 2
    assert crossings(("a", a), ("b", b), start=10.0) == [Crossing(2, "a"), Crossing(4, "b")]
    assert crossings(("a", a), ("b", b), start=0.01) == []  # neither gets down to it


def test_the_crossing_sentence_names_the_last_change_and_how_many_there_were():
    labels = ("head=learned", "head=nearest_etf")
    assert describe_crossings([], labels, "NC1") is None
    one = [Crossing(7, "head=learned")]
    assert describe_crossings(one, labels, "NC1") == "head=learned falls below head=nearest_etf in NC1 from epoch 7"
    two = [Crossing(7, "head=learned"), Crossing(9, "head=nearest_etf")]
    assert (
        describe_crossings(two, labels, "NC1")
        == "head=nearest_etf falls below head=learned in NC1 from epoch 9 (the order changed 2 times)"
    )


@pytest.mark.parametrize(
    ("ratio", "words"),
    [(1.0, "at the same epoch as"), (2.0, "2.00x sooner than"), (1.5, "1.50x sooner than"), (0.5, "2.00x later than")],
)
def test_the_answer_words_a_ratio(ratio, words):
    assert _sooner(ratio) == words


def test_a_solver_time_leaves_out_the_first_epoch_unless_it_is_the_only_one():
    assert solver_ms((np.array([1, 2]), np.array([10.0, 2.0]))) == 2.0
    assert solver_ms((np.array([1, 2, 3]), np.array([10.0, 2.0, 4.0]))) == 3.0
    assert solver_ms((np.array([1]), np.array([10.0]))) == 10.0


class _Run:
    def __init__(self, path):
        self.path = path


def test_runs_named_in_a_message():
    assert _named([_Run("a")]) == "a"
    assert _named([_Run("a"), _Run("b")]) == "a and 1 more runs"
    assert _named([_Run("a"), _Run("b"), _Run("c")]) == "a and 2 more runs"


def test_the_speedup_table_has_a_row_per_compared_group_with_how_it_was_paired():
    from etf_train.compare.report import speedup_table

    limits = [T, Threshold(NC1, 0.01, False)]
    summaries = {
        "base": group("base", (1, 2), (6.0, 8.0)),
        "paired": group("paired", (1, 2), (3.0, 4.0)),
        "unpaired": group("unpaired", (5,), (4.0,)),
        "empty": GroupSummary("empty", 0, 0, 0, Spread(()), {}, {}, Spread(()), ()),
    }
    speed = {
        "paired": {limits[0]: Speedup(2.0, 2.0, 2.0, 2, 2, True), limits[1]: Speedup(1.5, 1.0, 2.0, 2, 2, True)},
        "unpaired": {limits[0]: Speedup(1.75, 1.5, 2.0, 1, 1, False), limits[1]: Speedup(math.nan, 0, 0, 0, 1, False)},
    }
    lines = speedup_table(summaries, "base", limits, speed)
    assert lines[0].startswith("Speed-up over `base`: its epochs / the group's epochs") and lines[1] == ""
    assert lines[2:] == [
        "| group | paired by seed | NC1 <= 0.1 | NC1 <= 0.01 |",
        "|---|---|---|---|",
        "| paired | 2 seeds | 2.00x | 1.50x [1.00, 2.00] |",
        "| unpaired | no: ratio of medians | 1.75x [1.50, 2.00] | - |",
    ]


@pytest.mark.parametrize(
    ("jobs", "head"), [(1, "1 job refused before starting:"), (2, "2 jobs refused before starting:")]
)
def test_a_sweep_end_names_its_refused_jobs(tmp_path, jobs, head):
    """A sweep whose jobs were all refused at their start: no comparison (no runs), then the refused jobs, each
    line prefixed, blank lines bare."""
    from etf_train import sweepdir
    from etf_train.compare import sweep_end

    for seed in range(1, jobs + 1):
        sweepdir.note_refused(tmp_path, [f"seed={seed}"], "another run holds the folder")
    lines = sweep_end(tmp_path).split("\n")
    assert lines[0].startswith("etf-train: no comparison: ") and lines[1] == ""
    assert lines[2 : 5 + jobs][: jobs + 2] == [
        f"etf-train: {head}",
        *(f"etf-train: - seed={s}: another run holds the folder" for s in range(1, jobs + 1)),
        "",
    ]
    assert lines[-1] == f"etf-train: table, plots and curves.csv: etf-compare {tmp_path}"
    assert all(line.startswith("etf-train: ") or line == "" for line in lines)


def test_the_answer_sentence_against_the_baseline():
    """The first NC1 threshold where the groups differ and the deepest both reach, the accuracy threshold, the one
    only the group reaches, and the crossing, in the words a reader gets (written out here)."""
    from etf_train.compare.answer import answer
    from etf_train.compare.stats import EVAL_ACC

    nc1 = [Threshold(NC1, v, False) for v in (1.0, 0.1, 0.01, 0.001)]
    acc = Threshold(EVAL_ACC, 99, True)
    seeds = (1, 2, 3)

    def summary(label, epochs):  # epochs per threshold, the same for every seed
        reached = {t: Spread((e, e, e)) for t, e in zip([*nc1, acc], epochs)}
        return GroupSummary(label, 3, 3, 3, Spread(()), reached, {}, Spread(()), seeds)

    base = summary("head=learned", (1, 14, 40, math.inf, 5))
    group_ = summary("head=nearest_etf", (1, 4, 20, 60, 10))
    speed = {
        "head=nearest_etf": {
            nc1[0]: Speedup(1.0, 1.0, 1.0, 3, 3, True),
            nc1[1]: Speedup(3.5, 3.5, 3.5, 3, 3, True),
            nc1[2]: Speedup(2.0, 2.0, 2.0, 3, 3, True),
            nc1[3]: Speedup(math.nan, math.nan, math.nan, 0, 3, True),
            acc: Speedup(0.5, 0.5, 0.5, 3, 3, True),
        }
    }
    lines = answer(
        {"head=learned": base, "head=nearest_etf": group_},
        "head=learned",
        [*nc1, acc],
        speed,
        {"head=nearest_etf": "learned falls below nearest_etf in NC1 from epoch 30"},
    )
    assert lines == [
        "Against the baseline learned (baseline epochs / group epochs):",
        "- nearest_etf reaches NC1 <= 0.1 3.50x sooner than learned (4 vs 14 epochs, median; 3 of 3 seeds paired); "
        "at NC1 <= 0.01, 2.00x sooner (20 vs 40); "
        "train/eval_acc >= 99% 2.00x later than learned (10 vs 5 epochs, median; 3 of 3 seeds paired). "
        "Only nearest_etf's median run reaches NC1 <= 0.001 (epoch 60), learned's never does. "
        "Median curves cross: learned falls below nearest_etf in NC1 from epoch 30.",
    ]


def test_the_answer_when_the_deepest_shared_threshold_is_a_tie_and_only_the_baseline_gets_further():
    from etf_train.compare.answer import answer

    nc1 = [Threshold(NC1, v, False) for v in (1.0, 0.1, 0.01, 0.001)]
    seeds = (1, 2, 3)

    def summary(label, epochs):
        reached = {t: Spread(e if isinstance(e, tuple) else (e, e, e)) for t, e in zip(nc1, epochs)}
        return GroupSummary(label, 3, 3, 3, Spread(()), reached, {}, Spread(()), seeds)

    base = summary("head=learned", (2, 14, 20, 50))
    # at 0.001 one seed of three gets there: a paired ratio exists, but the group's median is never
    group_ = summary("head=fixed_etf", (1, 7, 20, (40.0, math.inf, math.inf)))
    speed = {
        "head=fixed_etf": {
            nc1[0]: Speedup(2.0, 2.0, 2.0, 3, 3, True),
            nc1[1]: Speedup(2.0, 2.0, 2.0, 3, 3, True),
            nc1[2]: Speedup(1.0, 1.0, 1.0, 3, 3, True),
            nc1[3]: Speedup(1.25, 1.25, 1.25, 1, 3, True),
        }
    }
    lines = answer({"head=learned": base, "head=fixed_etf": group_}, "head=learned", nc1, speed, {})
    assert lines[1] == (
        "- fixed_etf reaches NC1 <= 1 2.00x sooner than learned (1 vs 2 epochs, median; 3 of 3 seeds paired); "
        "at NC1 <= 0.01, at the same epoch (20 vs 20). "
        "Only learned's median run reaches NC1 <= 0.001 (epoch 50), fixed_etf's never does."
    )


def test_the_speedup_table_of_one_threshold_and_of_none():
    from etf_train.compare.report import speedup_table

    summaries = {"base": group("base", (1,), (6.0,)), "g": group("g", (1,), (3.0,))}
    one = speedup_table(summaries, "base", [T], {"g": {T: Speedup(2.0, 2.0, 2.0, 1, 1, True)}})
    assert one[2:] == ["| group | paired by seed | NC1 <= 0.1 |", "|---|---|---|", "| g | 1 seeds | 2.00x |"]
    assert speedup_table(summaries, "base", [], {"g": {}})[2:] == [
        "| group | paired by seed |",
        "|---|---|",
        "| g | - |",
    ]
    assert one[0] == (
        "Speed-up over `base`: its epochs / the group's epochs at each threshold (> 1: sooner), median [min, max] over "
        "the seeds both ran and both got there with (etf-train starts every head of a seed from the same backbone); "
        "groups without a seed in common: the ratio of median epochs, with the range of min / max run pairs; `-`: no "
        "pair got there."
    )


def test_a_log_axis_only_past_the_decades_and_never_for_no_values():
    from etf_train.compare.plot import spans_decades

    assert spans_decades(np.array([1.0, 100.0]), decades=2) is False  # exactly 2 decades: not more
    assert spans_decades(np.array([1.0, 1000.0]), decades=2) is True
    assert spans_decades(np.array([math.nan, math.inf]), decades=2) is False  # no finite value
    assert spans_decades(np.array([0.0, 1000.0]), decades=2) is False


def test_a_run_not_counted_is_described_with_its_reason_when_it_has_one():
    from omegaconf import OmegaConf

    from etf_train.compare.runs import RecordedRun
    from etf_train.rundir import RunState

    config = OmegaConf.create({"trainer": {"max_epochs": 6}})
    scalars = {"test/acc": (np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))}
    failed = RecordedRun(Path("r"), config, scalars, RunState("failed", "diverged at epoch 3"))
    assert failed.describe() == "r: failed at epoch 3 of 6 (diverged at epoch 3)"
    assert RecordedRun(Path("r"), config, scalars, RunState("unfinished")).describe() == "r: unfinished at epoch 3 of 6"


def test_curves_leave_out_an_unfinished_run_unless_asked(tmp_path):
    from etf_train.compare import curves

    from .test_compare import write_config, write_events

    for name, state in (("done", "finished"), ("running", "unfinished")):
        write_config(tmp_path / name, {"seed": 1, "head": {"name": name}}, state=state)
        write_events(tmp_path / name, {"test/acc": {1: 50.0, 2: 60.0}})
    assert {row["group"] for row in curves(tmp_path)} == {"head=done"}
    assert {row["group"] for row in curves(tmp_path, include_unfinished=True)} == {"head=done", "head=running"}


def test_a_message_names_four_differing_settings_and_says_when_there_are_more():
    from etf_train.compare.events import listed

    assert listed(["a: 1 -> 2", "b: x -> y"]) == "a: 1 -> 2, b: x -> y"
    four = [f"k{i}: {i} -> {i + 1}" for i in range(4)]
    assert listed(four) == "k0: 0 -> 1, k1: 1 -> 2, k2: 2 -> 3, k3: 3 -> 4"
    assert listed([*four, "k4: 4 -> 5"]) == "k0: 0 -> 1, k1: 1 -> 2, k2: 2 -> 3, k3: 3 -> 4 ..."


def test_an_epoch_in_the_answer_is_a_plain_number_or_never():
    assert [_epochs(x) for x in (12.0, 7.5, math.inf)] == ["12", "7.5", "never"]
