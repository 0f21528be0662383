"""etf-compare's option checks and analysis at their boundaries (issue 30's mutation run left these untested): each
limit is tried on both sides, and each refusal's words are written out here."""

from __future__ import annotations

import csv
import json
import math
import re
import struct
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import matplotlib
import pytest

from etf_train.compare import main
from etf_train.compare.analysis import _crossings, check_options
from etf_train.compare.answer import answer, threshold_words
from etf_train.compare.curves import curve_rows
from etf_train.compare.runs import RecordedRun
from etf_train.compare.speedup import Speedup, choose_baseline
from etf_train.compare.stats import EVAL_ACC, NC1, TEST_ACC, GroupSummary, Spread, Threshold, summarize
from etf_train.compare.steps import step_counts
from etf_train.errors import EtfTrainError

from .test_compare import fake_run, make_run, write_config, write_events

OK = {"acc": [90.0], "test_acc": [90.0], "nc1": [0.1], "dpi": 150, "port": None}


@pytest.mark.parametrize(
    "change",
    [
        {"acc": [1.0001, 100.0]},
        {"test_acc": [100.0]},
        {"nc1": [1e-300]},
        {"nc1": None},
        {"dpi": 1},
        {"dpi": 1200},
        {"port": 0},
        {"port": 65535},
    ],
)
def test_options_at_their_limits_are_accepted(change):
    check_options(**{**OK, **change})


@pytest.mark.parametrize(
    "change, says",
    [
        ({"acc": [1.0]}, "--acc-thresholds must lie in (1, 100], got 1 (accuracies are in percent: 100?)"),
        ({"acc": [0.5]}, "--acc-thresholds must lie in (1, 100], got 0.5 (accuracies are in percent: 50?)"),
        ({"acc": [1.5, 100.01]}, "--acc-thresholds must lie in (1, 100], got 100.01"),
        ({"test_acc": [0.0]}, "--test-acc-thresholds must lie in (1, 100], got 0"),
        ({"test_acc": [-3.0]}, "--test-acc-thresholds must lie in (1, 100], got -3"),
        ({"nc1": [0.1, 0.0]}, "--nc1-thresholds must be positive, got 0"),
        ({"nc1": [-1.0]}, "--nc1-thresholds must be positive, got -1"),
        ({"dpi": 0}, "--dpi must lie in 1..1200, got 0"),
        ({"dpi": 1201}, "--dpi must lie in 1..1200, got 1201"),
        ({"port": -1}, "--port must lie in 0..65535, got -1"),
        ({"port": 65536}, "--port must lie in 0..65535, got 65536"),
    ],
)
def test_options_past_their_limits_are_refused_in_words(change, says):
    with pytest.raises(EtfTrainError) as e:
        check_options(**{**OK, **change})
    assert str(e.value) == says


def test_the_whole_output_of_a_small_sweep(tmp_path, capsys, monkeypatch):
    """etf-compare's stdout as a reader gets it, every line: the answer, the setting, the thresholds, the compact
    table, the files written and the TensorBoard link at the --host and --port given; the warning on stderr; the
    figure at --dpi. The numbers follow from test_compare's SWEEP by hand: nearest_etf's train/eval_acc reaches 99 %
    at epochs 5 and 6 (median 5.5) against learned's 12 and 12 (2.20x), its NC1 <= 1 at 2 against 6 (3.00x)."""
    monkeypatch.setenv("COLUMNS", "120")
    root, out = tmp_path / "sweep", tmp_path / "out"
    for i, (head, seed) in enumerate([("learned", 1), ("nearest_etf", 1), ("learned", 2), ("nearest_etf", 2)]):
        make_run(root / str(i), head, seed)
    assert main([str(root), "--out", str(out), "--dpi", "40", "--host", "127.0.0.1", "--port", "7007"]) == 0
    stdout, stderr = capsys.readouterr()
    *lines, link, end = stdout.split("\n")
    assert lines == [
        "Against the baseline learned (baseline epochs / group epochs):",
        "- nearest_etf reaches NC1 <= 1 3.00x sooner than learned (2 vs 6 epochs, median; 2 of 2 seeds paired); "
        "train/eval_acc >= 99% 2.20x sooner than learned (5.5 vs 12 epochs, median; 2 of 2 seeds paired). "
        "Only nearest_etf's median run reaches NC1 <= 0.01 (epoch 7), learned's never does.",
        "",
        "Setting: cifar10 · backbone resnet18 · loss ce · SGD · schedule none · 12 epochs · seeds 1, 2 · "
        "etf-train version not recorded.",
        "NC1 thresholds: 1, 0.1, 0.01 (the default 1, 0.1, 0.01 and every further decade that every group's median "
        "curve reaches).",
        "",
        "group        runs  train/eval_acc >= 99%  test/acc >= 95%  NC1 <= 1   NC1 <= 0.1  NC1 <= 0.01  final test/acc %",
        "-----------  ----  ---------------------  ---------------  ---------  ----------  -----------  ----------------",
        "learned      2/2   12                     never            6          never       never        89.50",
        "nearest_etf  2/2   5.5 (2.20x)            9                2 (3.00x)  4           7            97.50",
        "(median epoch; (x): speed-up over the baseline; full table: comparison.md)",
        "",
        f"wrote {out}/comparison.md, {out}/comparison.csv, {out}/curves.csv, {out}/comparison.png",
    ]
    assert end == ""
    command, url = link.split("    then open ")
    assert command == f"compare: tensorboard --logdir {root} --host 127.0.0.1 --port 7007"
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("http", "127.0.0.1:7007", "/", "timeseries")
    query = parse_qs(parts.query)
    assert query["runColorGroup"] == ["regex:(learned_authors|fixed_etf_authors|learned|fixed_etf|nearest_etf)"]
    assert json.loads(query["pinnedCards"][0]) == [
        {"plugin": "scalars", "tag": tag} for tag in ("test/acc", "train/eval_acc", "nc_log10/nc1", "nc/nc3")
    ]
    assert stderr == (
        f"etf-compare: warning: groups 'head=learned' and 'head=nearest_etf' differ in more than their labels "
        f"({root}/0 vs {root}/1: metrics.every_n_epochs: 2 -> 1); compare runs of one setting, or add such keys to "
        "--group-by\n"
    )
    png = (out / "comparison.png").read_bytes()
    assert struct.unpack(">I", png[16:20])[0] == 3 * 4.5 * 40  # IHDR width: three 4.5-inch panels at 40 dpi
    md = (out / "comparison.md").read_text().split("\n")
    assert (
        "| head=nearest_etf | 2 seeds | 2.50x [2.00, 3.00] | 2.33x [2.00, 2.67] | 2.20x [2.00, 2.40] | 1.00x | - | - "
        "| 3.00x | - | - |"
    ) in md  # the speed-up table: epochs 4, 6 / 2, 2 at 90 %; 8, 8 / 3, 4 at 95 %; 12, 12 / 5, 6 at 99 %
    assert md[md.index("**Warnings** (read the table with them):") + 1] == "- " + stderr.removeprefix(
        "etf-compare: warning: "
    ).removesuffix("\n")
    assert any(line.startswith("train/eval_acc (eval-mode accuracy over the un-augmented train set)") for line in md)
    with (out / "comparison.csv").open() as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert rows["head=nearest_etf"]["speedup_nc1_le_1_median"] == "3.0"


def test_curve_rows_name_each_runs_folder_group_and_seed_tags_in_order():
    """One row per logged value; a run without a recorded seed has seed None; tags sorted within a run."""
    a = fake_run("runs/a", {"seed": 3}, {"test/acc": {1: 50.0}, "nc/nc1": {2: 0.5, 4: 0.25}})
    b = fake_run("runs/b", {}, {"train/loss": {1: 2.0}})
    assert curve_rows({"head=x": [a], "head=y": [b]}) == [
        {"run": "runs/a", "group": "head=x", "seed": 3, "epoch": 2, "tag": "nc/nc1", "value": 0.5},
        {"run": "runs/a", "group": "head=x", "seed": 3, "epoch": 4, "tag": "nc/nc1", "value": 0.25},
        {"run": "runs/a", "group": "head=x", "seed": 3, "epoch": 1, "tag": "test/acc", "value": 50.0},
        {"run": "runs/b", "group": "head=y", "seed": None, "epoch": 1, "tag": "train/loss", "value": 2.0},
    ]


def _summary(label: str, limits: list, epochs: tuple, n_runs: int = 3) -> GroupSummary:
    """A group whose runs all reached each threshold at these epochs (inf: never)."""
    reached = {t: Spread((e,) * n_runs) for t, e in zip(limits, epochs)}
    return GroupSummary(label, n_runs, n_runs, n_runs, Spread(()), reached, {}, Spread(()), (1, 2, 3)[:n_runs])


def test_without_a_baseline_the_answer_names_the_fastest_group_at_the_first_and_last_nc1_and_the_top_accuracy():
    nc1 = [Threshold(NC1, v, False) for v in (1.0, 0.1, 0.01)]
    acc = [Threshold(EVAL_ACC, v, True) for v in (90, 95, 99)]
    limits = [*nc1, Threshold(TEST_ACC, 90, True), *acc]
    summaries = {
        "head=fixed_etf": _summary("head=fixed_etf", [*nc1, *acc], (2, 5, 9, 3, 1, 12)),
        "head=nearest_etf": _summary("head=nearest_etf", [*nc1, *acc], (1, 5, 9, 4, 2, 12)),
        "head=learned": _summary("head=learned", [*nc1, *acc], (3, 4, 9.5, 1, 3, math.inf)),
        "head=empty": _summary("head=empty", [*nc1, *acc], (0.5,) * 6, n_runs=0),
    }
    assert answer(summaries, None, limits, {}, {}) == [
        "No baseline group (one learned head, or --baseline GROUP): the fastest group per threshold.",
        "- NC1 <= 1: nearest_etf first (median epoch 1)",
        "- NC1 <= 0.01: fixed_etf, nearest_etf tie (median epoch 9)",
        "- train/eval_acc >= 99%: fixed_etf, nearest_etf tie (median epoch 12)",
    ]
    # one NC1 threshold is both the first and the last: named once; a threshold no group reaches is left out
    never = {k: _summary(k, [nc1[0], acc[-1]], (2, math.inf)) for k in ("head=a", "head=b")}
    assert answer(never, None, [nc1[0], acc[-1]], {}, {}) == [
        "No baseline group (one learned head, or --baseline GROUP): the fastest group per threshold.",
        "- NC1 <= 1: a, b tie (median epoch 2)",
    ]


def test_without_a_counted_run_there_is_no_fastest_group():
    empty = {"head=a": _summary("head=a", [Threshold(NC1, 1.0, False)], (2,), n_runs=0)}
    assert answer(empty, None, [Threshold(NC1, 1.0, False)], {}, {}) == [
        "No baseline group (one learned head, or --baseline GROUP): the fastest group per threshold."
    ]


def test_a_group_sharing_no_threshold_with_the_baseline_is_said_to():
    nc1 = [Threshold(NC1, 0.1, False)]
    summaries = {
        "head=learned": _summary("head=learned", nc1, (4,)),
        "head=fixed_etf": _summary("head=fixed_etf", nc1, (math.inf,)),
    }
    speed = {"head=fixed_etf": {nc1[0]: Speedup(math.nan, math.nan, math.nan, 0, 3, True)}}
    assert answer(summaries, "head=learned", nc1, speed, {}) == [
        "Against the baseline learned (baseline epochs / group epochs):",
        "- fixed_etf shares no threshold with the baseline. Only learned's median run reaches NC1 <= 0.1 (epoch 4), "
        "fixed_etf's never does.",
    ]
    shared = {**summaries, "head=fixed_etf": _summary("head=fixed_etf", nc1, (2,))}
    speed = {"head=fixed_etf": {nc1[0]: Speedup(2.0, 2.0, 2.0, 3, 3, True)}}
    assert answer(shared, "head=learned", nc1, speed, {})[1] == (
        "- fixed_etf reaches NC1 <= 0.1 2.00x sooner than learned (2 vs 4 epochs, median; 3 of 3 seeds paired)."
    )  # nothing only one of them reaches: no more words
    assert answer(
        {**summaries, "head=fixed_etf": _summary("head=fixed_etf", nc1, (5,), n_runs=0)}, "head=learned", nc1, speed, {}
    ) == ["Against the baseline learned (baseline epochs / group epochs):"]


@pytest.mark.parametrize(
    "values, by_data, words",
    [
        (
            (1.0, 0.1),
            True,
            "NC1 thresholds: 1, 0.1 (the default 1, 0.1, 0.01 and every further decade that every "
            "group's median curve reaches).",
        ),
        ((0.5,), False, "NC1 thresholds: 0.5 (from --nc1-thresholds)."),
        ((), True, ""),
    ],
)
def test_the_nc1_thresholds_are_named_with_where_they_came_from(values, by_data, words):
    limits = [Threshold(EVAL_ACC, 90, True), *(Threshold(NC1, v, False) for v in values)]
    assert threshold_words(limits, by_data) == words


def _stepping(path: str, steps: int | None) -> RecordedRun:
    config = {"seed": 1} if steps is None else {"seed": 1, "sizes": {"steps_per_epoch": steps}}
    return fake_run(path, config, {"test/acc": {1: 50.0, 2: 60.0}})


def test_groups_of_different_steps_an_epoch_are_warned_about_in_numeric_order():
    groups = {
        "head=nearest_etf": [_stepping("a", 3), _stepping("b", 10), _stepping("c", None)],
        "head=learned": [_stepping("d", 4), _stepping("e", 4)],
        "head=fixed_etf": [_stepping("f", None)],  # records none: left out
    }
    assert step_counts(groups) == [
        "the groups take different numbers of optimiser steps an epoch (nearest_etf: 3/10; learned: 4): an epoch is "
        "not the same amount of training for each, so threshold epochs favour the group with more steps; --x steps "
        "draws the curves over steps"
    ]
    assert step_counts({"head=a": [_stepping("a", 4)], "head=b": [_stepping("b", 4), _stepping("c", None)]}) == []
    three = {f"head={k}": [_stepping(k, s)] for k, s in (("a", 2), ("b", 3), ("c", 4))}
    assert step_counts(three)[0].startswith(
        "the groups take different numbers of optimiser steps an epoch (a: 2; b: 3; c: 4)"
    )


NC1_CURVES = {"learned": [2.0, 1.0, 0.5, 0.05], "nearest_etf": [0.8, 0.6, 0.55, 0.5]}


def crossing_sweep(root: Path, **config) -> Path:
    """learned and nearest_etf, seeds 1 and 2, 4 epochs: NC1_CURVES, train/eval_acc 85, 90, 95, 100 and test/acc
    75, 80, 85, 90 (+ the seed); `config` is added to each run's record."""
    for i, (head, seed) in enumerate((h, s) for h in NC1_CURVES for s in (1, 2)):
        run = root / str(i)
        record = {"seed": seed, "head": {"name": head}, "dataset": {"name": "cifar10"}}
        record |= {"backbone": {"name": "resnet18"}, "optimizer": {"_target_": "torch.optim.SGD"}}
        write_config(run, record | {"loss": {"name": "ce"}, "metrics": {"every_n_epochs": 1}} | config)
        (run / ".hydra" / "overrides.yaml").write_text(f"- head={head}\n- seed={seed}\n- trainer.max_epochs=4\n")
        epochs = range(1, 5)
        write_events(
            run,
            {
                "train/eval_acc": {e: 80.0 + 5 * e for e in epochs},
                "test/acc": {e: 70.0 + 5 * e + seed for e in epochs},
                "nc/nc1": dict(zip(epochs, NC1_CURVES[head])),
            },
        )
    return root


def test_given_nc1_thresholds_a_crossing_and_the_reproducing_command(tmp_path, capsys, monkeypatch):
    """NC1_CURVES: nearest_etf is at 1 first
    (epoch 1 vs 2), learned goes below it at epoch 3 and alone reaches 0.1; the thresholds came from the command
    line, and the runs' overrides give the sweep that reproduces them."""
    monkeypatch.setenv("COLUMNS", "120")
    root = crossing_sweep(tmp_path / "sweep")
    argv = [str(root), "--out", str(tmp_path), "--nc1-thresholds", "1", "0.1", "--acc-thresholds", "90", "95"]
    assert main([*argv, "--metrics", "nc/nc1"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[:11] == [
        "Against the baseline learned (baseline epochs / group epochs):",
        "- nearest_etf reaches NC1 <= 1 2.00x sooner than learned (1 vs 2 epochs, median; 2 of 2 seeds paired); "
        "train/eval_acc >= 95% at the same epoch as learned (3 vs 3 epochs, median; 2 of 2 seeds paired). Only "
        "learned's median run reaches NC1 <= 0.1 (epoch 4), nearest_etf's never does. Median curves cross: learned "
        "falls below nearest_etf in NC1 from epoch 3.",
        "",
        "Setting: cifar10 · backbone resnet18 · loss ce · SGD · schedule none · 4 epochs · seeds 1, 2 · etf-train "
        "version not recorded.",
        "NC1 thresholds: 1, 0.1 (from --nc1-thresholds).",
        "Reproduce: `etf-train -m head=learned,nearest_etf seed=1,2 trainer.max_epochs=4`",
        "",
        "group        runs  train/eval_acc >= 95%  test/acc >= 90%  NC1 <= 1   NC1 <= 0.1  final test/acc %",
        "-----------  ----  ---------------------  ---------------  ---------  ----------  ----------------",
        "learned      2/2   3                      4                2          4           91.50",
        "nearest_etf  2/2   3 (1.00x)              4 (1.00x)        1 (2.00x)  never       91.50",
    ]


def _svg_text(path: Path) -> list[str]:
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text())]


def test_the_figure_etf_compare_draws_over_steps_with_its_legend_counts_and_warning(tmp_path, monkeypatch, capsys):
    """The figure compare() asks for, read back from the SVG's text: --x steps labels the axes in optimiser steps
    (epoch x 3 steps an epoch), the legend counts the drawn runs of all (an unfinished run is left out: n=1 of 2), the
    title names the epochs and the warning; --per-seed adds a line per run."""
    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # text as <text>, not glyph paths
    root = crossing_sweep(tmp_path / "sweep", sizes={"steps_per_epoch": 3})
    (root / "3" / "checkpoints" / "finished").unlink()  # nearest_etf, seed 2: unfinished
    record = root / "2" / ".hydra" / "config.yaml"  # nearest_etf, seed 1: 4 steps an epoch, a warning
    record.write_text(record.read_text().replace("steps_per_epoch: 3", "steps_per_epoch: 4"))
    argv = [str(root), "--format", "svg", "--metrics", "nc/nc1", "test/acc", "--x", "steps"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv[:-2], "--out", str(tmp_path / "b"), "--per-seed"]) == 0  # over epochs
    assert main([*argv[:-2], "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    text = _svg_text(tmp_path / "a" / "comparison.svg")
    assert text.count("optimiser step") == 2 and "epoch" not in text
    assert "16" in text  # the last step: epoch 4 x 4
    assert {"learned (n=2)", "nearest_etf (n=1 of 2)"} <= set(text)
    # the title counts epochs, not the last step (the records hold no trainer.max_epochs to read it from)
    assert (
        "cifar10 · backbone resnet18 · SGD · 4 epochs · 1-2 seeds per group · line = median, band = min-max over seeds"
        in text
    )
    assert "1 warning: see comparison.md" in text
    assert _svg_text(tmp_path / "b" / "comparison.svg").count("epoch") == 2
    lines = {d: (tmp_path / d / "comparison.svg").read_text().count('<g id="line2d_') for d in ("b", "c")}
    assert lines["b"] - lines["c"] == 2 * 3  # two panels, three drawn runs


def test_a_baseline_group_is_found_among_groups_of_one_run():
    runs = {"head=nearest_etf": [fake_run("a", {"head": {"name": "nearest_etf"}}, {})]}
    runs["head=learned"] = [fake_run("b", {"head": {"name": "learned"}}, {})]
    assert choose_baseline(runs, None) == "head=learned"


def test_the_option_checks_run_before_any_run_is_read(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--nc1-thresholds", "-1"]) == 2
    assert capsys.readouterr().err == "etf-compare: error: --nc1-thresholds must be positive, got -1\n"


def test_no_finished_run_under_several_folders_names_them_all(tmp_path, capsys):
    root = crossing_sweep(tmp_path / "sweep")
    for run in root.iterdir():
        (run / "checkpoints" / "finished").unlink()
    assert main([str(root / "0"), str(root / "1")]) == 2
    assert capsys.readouterr().err == (
        f"etf-compare: error: no finished runs under {root / '0'}, {root / '1'} (2 unfinished or failed); "
        "--include-unfinished compares them up to their last epoch\n"
    )


def test_a_scalar_the_table_needs_is_named_when_a_run_lacks_it(tmp_path, capsys):
    run = tmp_path / "run"
    write_config(run, {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "cifar10"}})
    write_events(run, {"train/eval_acc": {1: 90.0}, "nc/nc1": {1: 0.5}})
    assert main([str(run), "--metrics", "nc/nc1"]) == 2
    assert capsys.readouterr().err == f"etf-compare: error: run {run} has no scalar 'test/acc' (needed by the table)\n"


def test_the_crossing_names_the_group_that_goes_below_and_the_one_it_passes():
    """nearest_etf (2, 1, 0.5, 0.05) passes below learned (0.8, 0.6, 0.55, 0.5) at epoch 3: the sentence names the
    group first and the baseline second; the baseline is no group of its own here."""
    curves = {"learned": (0.8, 0.6, 0.55, 0.5), "nearest_etf": (2.0, 1.0, 0.5, 0.05)}
    groups = {
        f"head={h}": [fake_run(h, {"seed": 1, "head": {"name": h}}, {"nc/nc1": dict(zip(range(1, 5), v))})]
        for h, v in curves.items()
    }
    assert _crossings(groups, "head=learned", [1.0, 0.1]) == {
        "head=nearest_etf": "nearest_etf falls below learned in NC1 from epoch 3"
    }
    assert _crossings(groups, None, [1.0]) == {} and _crossings(groups, "head=learned", []) == {}


def test_a_summary_counts_finished_runs_only_unless_told():
    finished = fake_run("a", {"seed": 1}, {"test/acc": {1: 50.0, 2: 60.0}, "train/eval_acc": {1: 90.0, 2: 95.0}})
    unfinished = fake_run("b", {"seed": 2}, {"test/acc": {1: 50.0}, "train/eval_acc": {1: 91.0}}, "unfinished")
    limits = [Threshold(EVAL_ACC, 90, True)]
    by_default = summarize("x", [finished, unfinished], limits, EVAL_ACC)
    assert (by_default.n_runs, by_default.n_finished, by_default.n_total, by_default.seeds) == (1, 1, 2, (1,))
    both = summarize("x", [finished, unfinished], limits, EVAL_ACC, include_unfinished=True)
    assert (both.n_runs, both.seeds, both.finals[EVAL_ACC].values) == (2, (1, 2), (95.0, 91.0))


def test_include_unfinished_compares_folders_of_unfinished_runs_and_baseline_picks_the_group(tmp_path, capsys):
    root = crossing_sweep(tmp_path / "sweep")
    for run in root.iterdir():
        (run / "checkpoints" / "finished").unlink()
    argv = [str(root), "--out", str(tmp_path), "--include-unfinished", "--metrics", "nc/nc1"]
    assert main([*argv, "--baseline", "nearest"]) == 0
    assert capsys.readouterr().out.startswith("Against the baseline nearest_etf (baseline epochs / group epochs):\n")
