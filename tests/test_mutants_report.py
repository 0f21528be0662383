"""etf-compare's terminal table at its boundaries (issue 30: a mutation run found it pinned only by its width): which
threshold columns it keeps, in what order, which it drops first to fit the terminal, and every cell. The groups are
built here by hand; each expected line is written out."""

from __future__ import annotations

import math

import pytest

from etf_train.compare.report import compact, markdown, notes, table, write_csv
from etf_train.compare.runs import RecordedRun
from etf_train.compare.speedup import Speedup
from etf_train.compare.stats import GroupSummary, Spread, Threshold
from etf_train.tags import EVAL_ACC, NC1, TEST_ACC, TRAIN_ACC

from .test_compare import fake_run

inf, nan = math.inf, math.nan
A50, A90 = Threshold(TRAIN_ACC, 50, True), Threshold(TRAIN_ACC, 90, True)
T50, T80 = Threshold(TEST_ACC, 50, True), Threshold(TEST_ACC, 80, True)
N1, N01, N001 = Threshold(NC1, 1.0, False), Threshold(NC1, 0.1, False), Threshold(NC1, 0.01, False)
LIMITS = [A50, A90, T50, T80, N1, N01, N001]
LONG = "head=nearest_etf, optimizer.a_much_longer_option_name_than_forty=1"


def group(n_runs: int, n_finished: int, n_total: int, reached: list[tuple], finals: tuple) -> GroupSummary:
    """Epochs to each of LIMITS per run (inf: never), and each run's final test accuracy."""
    spreads = {t: Spread(v) for t, v in zip(LIMITS, reached, strict=True)}
    return GroupSummary("", n_runs, n_finished, n_total, Spread(()), spreads, {TEST_ACC: Spread(finals)}, Spread(()))


SUMMARIES = {
    # the deepest thresholds some group's median reaches: train/acc 90 (not 50), test/acc 50 (80: a median of
    # (inf, 30) is inf), NC1 0.1 (not 0.01); NC1's first threshold and its middle one (0.1 again) are kept too
    "head=learned": group(
        3,
        3,
        3,
        [(2, 3, 4), (10, 12, inf), (5, 6, 7), (inf,) * 3, (4, 4, 5), (20, inf, inf), (inf,) * 3],
        (81.2, 82, 83),
    ),
    "head=fixed_etf": group(0, 0, 2, [()] * 7, ()),  # no run counted: no row
    LONG: group(2, 1, 3, [(1, 2), (6, 8), (3, 3), (inf, 30), (2, 3), (9, 11), (inf, inf)], (90.0, 91.0)),
}
SPEED = {
    LONG: {
        A90: Speedup(1.71, 1.5, 2.0, 2, 2, True),
        N1: Speedup(1.6, 1.0, 2.0, 2, 2, True),
        T50: Speedup(nan, nan, nan, 0, 2, True),
    }
}


def test_every_column_fits_a_wide_terminal_in_the_order_of_the_thresholds():
    assert compact(SUMMARIES, "head=learned", LIMITS, SPEED, "out/comparison.md", width=158) == [
        "group                                     runs                         train/acc (training) >= 90%  "
        "test/acc >= 50%  NC1 <= 1     NC1 <= 0.1  final test/acc %",
        "----------------------------------------  ---------------------------  ---------------------------  "
        "---------------  -----------  ----------  ----------------",
        "learned                                   3/3                          12                           "
        "6                4            never       82.00",
        "nearest_etf, a_much_longer_option_name_t  1/3 (+1 unfinished counted)  7 (1.71x)                    "
        "3                2.5 (1.60x)  10          90.50",
        "(median epoch; (x): speed-up over the baseline; full table: out/comparison.md)",
    ]


@pytest.mark.parametrize(
    ("width", "columns"),
    [
        (157, ["train/acc (training) >= 90%", "NC1 <= 1", "NC1 <= 0.1"]),  # test/acc goes first
        (141, ["train/acc (training) >= 90%", "NC1 <= 1", "NC1 <= 0.1"]),
        (140, ["NC1 <= 1", "NC1 <= 0.1"]),  # then train/acc
        (112, ["NC1 <= 1", "NC1 <= 0.1"]),
        (111, ["NC1 <= 1"]),  # NC1's first threshold stays longest
        (100, ["NC1 <= 1"]),
        (99, []),
        (10, []),  # the group, its runs and the final accuracy are kept however narrow
    ],
)
def test_columns_are_dropped_one_at_a_time_until_the_table_fits(width, columns):
    lines = compact(SUMMARIES, None, LIMITS, SPEED, "out/comparison.md", width=width)
    header = [cell for cell in lines[0].split("  ") if cell.strip()]
    assert [cell.strip() for cell in header] == ["group", "runs", *columns, "final test/acc %"]
    assert len(lines[0]) == (87 if not columns else {1: 100, 2: 112, 3: 141}[len(columns)])
    assert lines[-1] == "(median epoch; full table: out/comparison.md)"  # no baseline, no (x)


NC = [Threshold(NC1, v, False) for v in (1, 0.3, 0.1, 0.03, 0.01)]
EVAL = [Threshold(EVAL_ACC, v, True) for v in (50, 70, 90)]
LIMITS_2 = [*NC, *EVAL, T50, T80]
# every NC1 and eval threshold reached; test/acc 50 not logged by the run (`-`), 80 never reached
EPOCHS_2 = [(2,), (4,), (6,), (8,), (10,), (1,), (3,), (5,), (), (inf,)]
ONE_RUN = GroupSummary(
    "", 1, 1, 1, Spread(()), {t: Spread(v) for t, v in zip(LIMITS_2, EPOCHS_2)}, {TEST_ACC: Spread((70.0,))}, Spread(())
)


def test_nc1s_first_middle_and_deepest_thresholds_the_deepest_accuracy_and_the_first_test_one_when_none_is_reached():
    assert compact({"head=learned": ONE_RUN}, None, LIMITS_2, {}, "f.md", width=1000) == [
        "group    runs  NC1 <= 1  NC1 <= 0.1  NC1 <= 0.01  train/eval_acc >= 90%  test/acc >= 50%  final test/acc %",
        "-------  ----  --------  ----------  -----------  ---------------------  ---------------  ----------------",
        "learned  1/1   2         6           10           5                      -                70.00",
        "(median epoch; full table: f.md)",
    ]


@pytest.mark.parametrize(("label", "kept"), [("head=learned, note=xxxxxxx", 5), ("head=learned, note=xxxxxxxx", 4)])
def test_the_terminal_is_120_columns_unless_told(label, kept):
    """The same table as above with a longer group name: 120 columns wide, or 121 (NC1's middle threshold goes)."""
    lines = compact({label: ONE_RUN}, None, LIMITS_2, {}, "f.md")
    assert len(lines[0]) == (120 if kept == 5 else 121 - len("NC1 <= 0.1  "))
    assert ("NC1 <= 0.1" in lines[0]) == (kept == 5) and lines[0].count("<=") + lines[0].count(">=") == kept


def test_the_full_table_gives_each_spread_with_its_own_precision():
    base = GroupSummary(
        "head=learned",
        3,
        3,
        3,
        Spread((100, 100, 100)),
        {A90: Spread((10, 20, inf)), N1: Spread((1e6, 2e6, 3e6))},  # over steps, a threshold can take millions
        {TEST_ACC: Spread((81.234, 82.0, 83.5)), EVAL_ACC: Spread((99.0, 99.5, 100.0))},
        Spread(()),  # no solver
    )
    other = GroupSummary(
        "head=nearest_etf",
        2,
        1,
        2,
        Spread((40, 100)),
        {A90: Spread((inf, inf)), N1: Spread(())},
        {TEST_ACC: Spread((90.0, 91.0)), EVAL_ACC: Spread((nan, 99.0))},
        Spread((1.23456, 2.5)),
    )
    assert table([base, other]) == (
        [
            "group",
            "runs finished",
            "epochs",
            "train/acc (measured during training) >= 90%",
            "NC1 <= 1",
            "final test/acc %",
            "final train/eval_acc %",
            "solver ms/step",
        ],
        [
            [
                "head=learned",
                "3/3",
                "100 [100, 100]",
                "20 [10, never]",
                "2e+06 [1e+06, 3e+06]",
                "82.00 [81.23, 83.50]",
                "99.50 [99.00, 100.00]",
                "-",
            ],
            [
                "head=nearest_etf",
                "1/2 (+1 unfinished counted)",
                "70 [40, 100]",
                "never",
                "-",
                "90.50 [90.00, 91.00]",
                "degenerate",
                "1.867 [1.235, 2.500]",
            ],
        ],
    )


def test_the_notes_say_what_each_accuracy_measures():
    logged = (
        "train/eval_acc (eval-mode accuracy over the un-augmented train set) and the NC metrics are logged every "
        "metrics.every_n_epochs epochs and at the last: their threshold epochs have that interval as resolution; "
        "train/acc and test/acc are logged every epoch."
    )
    solver = (
        "solver ms/step: per run the mean solver/ms without its first epoch (warm-up), median [min, max] over runs."
    )
    assert notes(EVAL_ACC) == [logged, solver]
    assert notes(TRAIN_ACC) == [
        logged + " train/acc is measured during training, as the weights change (nearest_etf: with a classifier "
        "fitted to running means that include the batch), which flatters early epochs.",
        solver,
    ]


LEGEND = (
    "Cells: median [min, max] over {counted} of a group; `-`: none. Threshold columns: the first logged epoch at which "
    "the tag >= T (accuracies) or <= T (NC1); `never` = a run never got there within its epochs (ranked after every "
    "epoch); a bare `never` = no run did."
)


def recorded(name: str, status: str, epochs: int) -> RecordedRun:
    return fake_run(name, {"trainer": {"max_epochs": 6}}, {TEST_ACC: dict.fromkeys(range(1, epochs + 1), 1.0)}, status)


def test_the_report_file_in_order_intro_table_after_warnings_legend_and_runs_not_counted():
    others = [recorded("runs/u", "unfinished", 3), recorded("runs/f", "failed", 0)]
    args = (["g", "x"], [["a|b", "1"]], others)
    text = markdown(*args, False, ["note 1", "note 2"], ["w 1", "w 2"], ["answer", "setting"], ["after"])
    assert text == "\n".join(
        [
            "answer",
            "setting",
            "",
            "| g | x |",
            "|---|---|",
            r"| a\|b | 1 |",
            "",
            "after",
            "",
            "**Warnings** (read the table with them):",
            "- w 1",
            "- w 2",
            "",
            LEGEND.format(counted="its finished runs"),
            "note 1",
            "note 2",
            "",
            "Not counted (unfinished or failed; --include-unfinished adds the epochs they logged):",
            "- runs/u: unfinished at epoch 3 of 6",
            "- runs/f: failed at epoch 0 of 6",
            "",
        ]
    )
    # with --include-unfinished: the run that logged epochs is counted, the one that logged none is not
    assert markdown(*args, True, [], [], [], []) == "\n".join(
        [
            "| g | x |",
            "|---|---|",
            r"| a\|b | 1 |",
            "",
            LEGEND.format(counted="all runs that logged an epoch, unfinished ones too"),
            "",
            "Unfinished or failed runs, counted up to their last logged epoch:",
            "- runs/u: unfinished at epoch 3 of 6",
            "",
            "Not counted (no epoch logged):",
            "- runs/f: failed at epoch 0 of 6",
            "",
        ]
    )


def test_the_csv_has_every_number_unformatted_and_empty_cells_where_there_is_none(tmp_path):
    base = GroupSummary(
        "head=learned",
        2,
        2,
        3,
        Spread((10, 10)),
        {N1: Spread((4, inf)), A90: Spread(())},
        {TEST_ACC: Spread((80.0, 90.0))},
        Spread(()),
    )
    other = GroupSummary(
        "head=nearest_etf",
        1,
        1,
        1,
        Spread((10,)),
        {N1: Spread((2,)), A90: Spread((5,))},
        {TEST_ACC: Spread((95.0,))},
        Spread((1.5,)),
    )
    speed = {"head=nearest_etf": {N1: Speedup(2.0, 2.0, 2.0, 1, 1, True), A90: Speedup(nan, nan, nan, 0, 1, True)}}
    acc = "train_acc_measured_during_training_ge_90"
    header = (
        "group,runs,runs_finished,runs_total,epochs_median,epochs_min,epochs_max,"
        "epochs_to_nc1_le_1_median,epochs_to_nc1_le_1_min,epochs_to_nc1_le_1_max,epochs_to_nc1_le_1_reached,"
        f"epochs_to_{acc}_median,epochs_to_{acc}_min,epochs_to_{acc}_max,epochs_to_{acc}_reached,"
        "final_test_acc_median,final_test_acc_min,final_test_acc_max,"
        "solver_ms_per_step_median,solver_ms_per_step_min,solver_ms_per_step_max"
    )
    write_csv(tmp_path / "a.csv", [base, other], speed)
    assert (tmp_path / "a.csv").read_bytes().decode().split("\r\n") == [
        header + ",speedup_nc1_le_1_median,speedup_nc1_le_1_min,speedup_nc1_le_1_max,speedup_nc1_le_1_pairs"
        f",speedup_{acc}_median,speedup_{acc}_min,speedup_{acc}_max,speedup_{acc}_pairs",
        "head=learned,2,2,3,10.0,10.0,10.0,inf,4.0,inf,1,,,,0,85.0,80.0,90.0,,,,,,,,,,,",
        "head=nearest_etf,1,1,1,10.0,10.0,10.0,2.0,2.0,2.0,1,5.0,5.0,5.0,1,95.0,95.0,95.0,1.5,1.5,1.5,2.0,2.0,2.0,1,,,,",
        "",
    ]
    write_csv(tmp_path / "b.csv", [base, other])  # no baseline: no speed-up columns
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert (
        lines[0] == header
        and lines[2] == "head=nearest_etf,1,1,1,10.0,10.0,10.0,2.0,2.0,2.0,1,5.0,5.0,5.0,1,95.0,95.0,95.0,1.5,1.5,1.5"
    )
