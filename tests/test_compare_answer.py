"""etf-compare's answer: speed-ups over a baseline (paired by seed), NC1 thresholds that follow the data, crossings
of median curves, the plain-language summary, the setting, the compact terminal table and curves.csv. Expected
values are computed here from the fixtures' own numbers (tests/test_compare.py's SWEEP)."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from etf_train.compare import (
    choose_baseline,
    crossings,
    curves,
    load_runs,
    main,
    nc1_thresholds,
    speedup,
    summarize,
    thresholds,
)
from etf_train.compare.setting import readable, reproduce, setting
from etf_train.compare.stats import EpochStats
from etf_train.errors import EtfTrainError

from .test_compare import NC1_EPOCHS, SWEEP, fake_run, groups, make_run, runs, sweep  # noqa: F401 (fixtures)

LIMITS = thresholds("train/eval_acc", [90, 95, 99], [90], [1.0, 0.1, 0.01])


def first_nc1(head: str, seed: int, value: float) -> float:
    """The first NC1 epoch <= value of a SWEEP run, read off the fixture's own table."""
    nc1 = SWEEP[head][seed][2]
    return next((float(e) for e, v in zip(NC1_EPOCHS, nc1) if v <= value), math.inf)


def test_speedup_is_baseline_over_group_epochs_paired_by_seed(groups):  # noqa: F811
    """Catches an inverted ratio, unpaired medians where seeds pair, or a never-reaching seed counted."""
    s = {label: summarize(label, rs, LIMITS, "train/eval_acc") for label, rs in groups.items()}
    nc1_1 = next(t for t in LIMITS if t.tag == "nc/nc1" and t.value == 1.0)
    got = speedup(s["head=fixed_etf"], s["head=learned"], nc1_1)
    ratios = [first_nc1("learned", k, 1.0) / first_nc1("fixed_etf", k, 1.0) for k in (1, 2, 3)]
    assert got.paired and (got.n, got.of) == (3, 3)
    assert (got.median, got.low, got.high) == (pytest.approx(float(np.median(ratios))), min(ratios), max(ratios))
    assert got.format() == f"{np.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]"
    # NC1 <= 0.1: learned never gets there, so no seed pairs
    nc1_01 = next(t for t in LIMITS if t.tag == "nc/nc1" and t.value == 0.1)
    none = speedup(s["head=nearest_etf"], s["head=learned"], nc1_01)
    assert none.n == 0 and none.format() == "-"


def test_groups_without_a_common_seed_get_the_ratio_of_medians():
    cfg = lambda head, seed: {"seed": seed, "head": {"name": head}}  # noqa: E731
    nc = lambda *v: {"nc/nc1": dict(zip((1, 2, 3, 4), v)), "train/eval_acc": {4: 50.0}, "test/acc": {4: 50.0}}  # noqa: E731
    base = [fake_run(f"b{k}", cfg("learned", k), nc(*c)) for k, c in ((1, (3, 2, 0.5, 0.4)), (2, (3, 2, 2, 0.5)))]
    other = [
        fake_run(f"o{k}", cfg("nearest_etf", k), nc(*c))
        for k, c in ((7, (0.9, 0.5, 0.1, 0.1)), (8, (2, 0.5, 0.4, 0.1)))
    ]
    limits = thresholds("train/eval_acc", [], [], [1.0])
    got = speedup(
        summarize("o", other, limits, "train/eval_acc"), summarize("b", base, limits, "train/eval_acc"), limits[0]
    )
    assert not got.paired and got.median == pytest.approx(np.median([3, 4]) / np.median([1, 2]))
    assert (got.low, got.high) == (3 / 2, 4 / 1)


def test_the_baseline_is_the_one_learned_group_or_the_one_asked_for(groups):  # noqa: F811
    assert choose_baseline(groups, None) == "head=learned"
    assert choose_baseline(groups, "nearest") == "head=nearest_etf"
    with pytest.raises(EtfTrainError, match="'etf' matches several groups"):
        choose_baseline(groups, "etf")
    with pytest.raises(EtfTrainError, match="matches no group; the groups: head=fixed_etf; head=learned"):
        choose_baseline(groups, "cosine")
    assert choose_baseline({k: v for k, v in groups.items() if k != "head=learned"}, None) is None


def test_nc1_thresholds_go_as_deep_as_every_group_gets():
    """Catches thresholds stopping at 0.01 while every curve goes further, or going deeper than some group gets."""

    def group(*lows):
        return [fake_run(f"r{i}", {"seed": i}, {"nc/nc1": {1: 1.0, 2: low}}) for i, low in enumerate(lows)]

    deep = {"a": group(3e-6, 1e-6, 2e-6), "b": group(4e-5, 5e-5, 1e-3)}  # medians 2e-6 and 5e-5
    assert nc1_thresholds(deep) == pytest.approx([1, 0.1, 0.01, 1e-3, 1e-4])
    shallow = {"a": group(3e-6), "b": group(0.2)}
    assert nc1_thresholds(shallow) == pytest.approx([1, 0.1, 0.01])  # the defaults, never fewer
    assert nc1_thresholds({"a": group(np.float32(1e-3).item())}) == pytest.approx([1, 0.1, 0.01, 1e-3])
    # a median NC1 of exactly 0 (features collapsed to float32 round-off) reaches every decade at once: no more
    # columns than the defaults, and no log of 0
    assert nc1_thresholds({"a": group(0.0)}) == pytest.approx([1, 0.1, 0.01])


def stats(*median) -> EpochStats:
    e = np.arange(1, len(median) + 1)
    m = np.array(median, dtype=float)
    return EpochStats(e, m, m, m, np.ones_like(e))


def test_crossings_of_median_curves_after_the_first_threshold():
    a = ("nearest_etf", stats(5, 1.0, 0.1, 0.01, 0.005, 0.001))
    b = ("learned", stats(4, 2.0, 0.5, 0.005, 0.002, 0.0001))  # b below a before either reached 1: ignored
    found = crossings(a, b, 1.0)
    assert [(c.epoch, c.below) for c in found] == [(4, "learned")]
    c = ("learned", stats(4, 2.0, 0.05, 0.02, 0.002, 0.002))  # below at 3, above at 4, below at 5, above at 6
    assert [(x.epoch, x.below) for x in crossings(a, c, 1.0)] == [
        (3, "learned"),
        (4, "nearest_etf"),
        (5, "learned"),
        (6, "nearest_etf"),
    ]


def test_the_answer_comes_first_with_numbers_from_the_tables(sweep, tmp_path, capsys):  # noqa: F811
    assert main([str(sweep), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    md = (tmp_path / "comparison.md").read_text()
    ratio = np.median([first_nc1("learned", k, 1.0) / first_nc1("nearest_etf", k, 1.0) for k in (1, 2, 3)])
    learned_med = np.median([first_nc1("learned", k, 1.0) for k in (1, 2, 3)])
    nearest_med = np.median([first_nc1("nearest_etf", k, 1.0) for k in (1, 2, 3)])
    sentence = (
        f"- nearest_etf reaches NC1 <= 1 {ratio:.2f}x sooner than learned ({nearest_med:g} vs {learned_med:g} "
        "epochs, median; 3 of 3 seeds paired)"
    )
    assert out.startswith("Against the baseline learned") and sentence in out
    assert md.startswith("Against the baseline learned") and sentence in md
    assert "| head=nearest_etf | 3 seeds | " in md and f"| {ratio:.2f}x [" in md  # the speed-up table holds it
    assert "Only nearest_etf's median run reaches NC1 <= 0.01" in md
    assert "NC1 thresholds: 1, 0.1, 0.01 (the default" in md
    assert "Setting: cifar10 · backbone resnet18 · loss ce · SGD" in out
    with (tmp_path / "comparison.csv").open() as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert float(rows["head=nearest_etf"]["speedup_nc1_le_1_median"]) == pytest.approx(ratio)
    assert (
        rows["head=nearest_etf"]["speedup_nc1_le_1_pairs"] == "3"
        and rows["head=learned"]["speedup_nc1_le_1_median"] == ""
    )


def test_the_terminal_table_fits_120_columns(tmp_path, capsys):
    for head in ("learned", "nearest_etf"):
        for seed in (1, 2):
            make_run(tmp_path / f"{head}{seed}", head, seed, tau=12.5, some_long_option_name="a-long-value")
    args = [
        str(tmp_path),
        "--nc1-thresholds",
        "1",
        "0.1",
        "0.01",
        "0.001",
        "1e-4",
        "1e-5",
        "--acc-thresholds",
        "50",
        "60",
        "70",
        "80",
        "90",
        "95",
        "99",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("\ngroup ") + 1 : out.index("(median epoch")].splitlines()
    assert len(table) == 4 and max(map(len, table)) <= 120, table
    assert "NC1 <= 1 " in table[0] and "final test/acc %" in table[0]


def test_curves_csv_and_the_function_give_every_logged_value(sweep, tmp_path, capsys):  # noqa: F811
    assert main([str(sweep), "--out", str(tmp_path)]) == 0
    with (tmp_path / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "group", "seed", "epoch", "tag", "value"]
    learned1 = [r for r in rows if r["group"] == "head=learned" and r["seed"] == "1" and r["tag"] == "nc/nc1"]
    assert [int(r["epoch"]) for r in learned1] == list(NC1_EPOCHS)
    assert [float(r["value"]) for r in learned1] == pytest.approx(SWEEP["learned"][1][2], rel=1e-6)  # float32 events
    expected = sum(len(c[0]) for r in load_runs([sweep]) for c in r.scalars.values())
    assert len(rows) == expected
    again = curves(sweep)
    assert len(again) == expected and {r["group"] for r in again} == {f"head={h}" for h in SWEEP}


def test_setting_and_reproduce_name_what_ran(tmp_path):
    for head in ("learned", "nearest_etf"):
        for seed in (1, 2, 3):
            run = make_run(tmp_path / f"{head}{seed}", head, seed)
            cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
            cfg.sizes = {"num_classes": 10, "train_samples": 1000, "feature_dim": 512}
            cfg.optimizer = {"_target_": "etf_train.training.agd.AGD", "gain": 10.0, "effective_depth": 2}
            cfg.trainer = {"max_epochs": 12, "batch_size": 256}
            cfg.dataset.name = "ufm"
            cfg.code_version = "0.1.0+gabc1234"
            OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
            (run / ".hydra" / "overrides.yaml").write_text(
                yaml.safe_dump(["experiment=ufm10_authors", f"head={head}", f"seed={seed}", "hydra.sweep.dir=/x"])
            )
    runs = load_runs([tmp_path])  # noqa: F811
    assert setting(runs) == (
        "UFM, K=10, 1,000 train samples · backbone resnet18, d=512 · loss ce · AGD (gain 10.0, "
        "depth 2) · schedule none · 12 epochs, batch 256 · seeds 1-3 · etf-train 0.1.0+gabc1234"
    )
    assert reproduce(runs) == "etf-train -m experiment=ufm10_authors head=learned,nearest_etf seed=1,2,3"
    assert readable("head=nearest_etf, optimizer=agd, optimizer.effective_depth=2") == "nearest_etf, AGD, depth 2"
    assert readable("head=learned, head.tau=20, loss.name=mse") == "learned, tau 20, loss.name mse"


def test_figure_marks_nc1_thresholds_and_draws_each_seed_when_asked(groups):  # noqa: F811
    from etf_train.compare import figure

    fig = figure(groups, ["test/acc", "nc/nc1"], nc1_lines=[1.0, 0.1, 0.01], per_seed=True)
    acc, nc1 = fig.axes[:2]
    dotted = sorted(
        ln.get_ydata()[0] for ln in nc1.get_lines() if ln.get_linestyle() == ":" and ln.get_color() == "0.5"
    )
    assert dotted == [0.01, 0.1, 1.0]
    assert len(acc.get_lines()) == 3 + 9  # a median per group and a thin line per run
    lowest = min(min(r.scalars["test/acc"][1]) for rs in groups.values() for r in rs)
    assert acc.get_ylim()[0] > 0 and acc.get_ylim()[0] <= lowest  # the medians' range, not 0-100
    assert len(figure(groups, ["test/acc"]).axes[0].get_lines()) == 3


def test_a_sweep_ends_with_its_answer_and_names_the_jobs_that_failed(tmp_path):
    """The real `etf-train -m`: a job refused at its start (solver=gram for the learned head) leaves no run folder,
    yet the end of the sweep names it with its reason, beside the summary of the runs that finished; exit 1."""
    from .conftest import TINY, etf_train

    proc = etf_train("-m", *TINY, "head=learned,nearest_etf", "solver=gram", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = proc.stdout
    assert "etf-train: No baseline group" in out and "etf-train: - NC1 <= 1: nearest_etf first" in out
    assert "etf-train: 1 job refused before starting:" in out
    assert "head=learned solver=gram" in out and "the solver group applies to head=nearest_etf only" in out
    assert "etf-train: table, plots and curves.csv: etf-compare sweep" in out


def test_the_end_of_a_sweep_lists_runs_that_failed_after_starting(sweep, tmp_path):  # noqa: F811
    import shutil

    from etf_train.compare import sweep_end

    from .test_compare import write_config

    shutil.copytree(sweep, tmp_path / "s")
    write_config(
        tmp_path / "s" / "diverged",
        {"seed": 4, "head": {"name": "nearest_etf"}, "dataset": {"name": "cifar10"}},
        state="failed",
    )
    text = sweep_end(tmp_path / "s")
    assert "etf-train: 1 of 10 runs not counted:" in text
    assert f"etf-train: - {tmp_path / 's' / 'diverged'}: failed at epoch 0 (diverged at epoch 1, step 2)" in text
    assert "etf-train: Against the baseline learned" in text and "refused" not in text
    # the blocks in order, each ended by one bare blank line: the answer and table (its note pointing at the full
    # table), the runs not counted, then where to look
    lines = text.split("\n")
    assert lines[0] == "etf-train: Against the baseline learned (baseline epochs / group epochs):"
    table_end = next(i for i, line in enumerate(lines) if line.endswith(f"full table: etf-compare {tmp_path / 's'})"))
    assert lines[table_end + 1 : table_end + 5] == [
        "",
        "etf-train: 1 of 10 runs not counted:",
        f"etf-train: - {tmp_path / 's' / 'diverged'}: failed at epoch 0 (diverged at epoch 1, step 2)",
        "",
    ]


def test_serve_starts_tensorboard_on_exactly_the_compared_runs_and_stops_on_ctrl_c(sweep, tmp_path):  # noqa: F811
    """--serve: TensorBoard answers on the port the printed link names, lists the runs as group/seed (the link colours
    by the first path part), and Ctrl-C ends it with status 0, its copies of the runs removed."""
    import json
    import re
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    scratch = tmp_path / "tmp"  # its own temporary folder: other processes' leftovers in /tmp are not its
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "etf_train.compare", str(sweep), "--out", str(tmp_path), "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        line = next(line for line in proc.stdout if "TensorBoard on" in line)
        url = re.search(r"(http://\S+)", line).group(1)
        assert "runColorGroup=regex%3A%5E%28%5B%5E%2F%5D%2B%29%2F" in url and "nc_log10%2Fnc1" in url
        port = int(re.search(r"localhost:(\d+)/", url).group(1))
        runs = []
        for _ in range(120):
            try:
                runs = json.load(urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=5))
                if len(runs) == 9:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert sorted(runs) == sorted(f"{h}/seed{s}" for h in SWEEP for s in (1, 2, 3))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert not list(scratch.glob("etf-compare-view-*"))  # (TensorBoard keeps its .tensorboard-info there)


def test_the_printed_link_takes_a_host_and_port(monkeypatch):
    from etf_train.view import how_to_look

    assert "localhost:6006/?smoothing=0&forceSVG=true" in how_to_look("runs")
    monkeypatch.setenv("ETF_TENSORBOARD", "gpu7:7007")
    text = how_to_look("runs")
    assert text.startswith("compare: tensorboard --logdir runs --host gpu7 --port 7007    then open http://gpu7:7007/?")
    assert "http://node:9000/" in how_to_look("runs", "node", 9000)
    monkeypatch.setenv("ETF_TENSORBOARD", "gpu7:x")
    with pytest.raises(EtfTrainError, match="ETF_TENSORBOARD='gpu7:x': give host:port"):
        how_to_look("runs")
