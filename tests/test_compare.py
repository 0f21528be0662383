"""etf-compare against hand-made runs written with the real SummaryWriter and OmegaConf."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from etf_train import compare
from etf_train.compare import (
    Spread,
    epoch_stats,
    group_runs,
    load_runs,
    main,
    read_scalars,
    summarize,
)
from etf_train.errors import EtfTrainError

REPO = Path(__file__).resolve().parents[1]
NC1_EPOCHS = (2, 4, 6, 8, 10, 12)

# head -> seed -> (epochs, (first epoch of train acc >= 90, >= 95, >= 99; None = never), nc1 at NC1_EPOCHS)
SWEEP = {
    "learned": {
        1: (12, (3, 6, 10), (3, 1.5, 0.8, 0.4, 0.2, 0.15)),
        2: (12, (4, 7, 11), (3, 1.2, 1.0, 0.5, 0.3, 0.2)),
        3: (12, (5, 8, None), (4, 2, 1.5, 0.9, 0.5, 0.3)),
    },
    "fixed_etf": {
        1: (12, (2, 4, None), (2, 0.9, 0.3, 0.09, 0.05, 0.02)),
        2: (12, (2, 5, None), (2, 0.8, 0.2, 0.1, 0.04, 0.02)),  # 0.1 is stored as float32 0.10000000149
        3: (12, (3, 5, 9), (0.9, 0.5, 0.15, 0.08, 0.03, 0.009)),
    },
    "nearest_etf": {
        1: (12, (1, 2, 4), (0.5, 0.05, 0.008, 0.004, 0.002, 0.001)),
        2: (12, (1, 3, 5), (0.6, 0.09, 0.02, 0.009, 0.003, 0.001)),
        3: (10, (2, 3, 6), (0.7, 0.2, 0.05, 0.01, 0.005)),  # a shorter run
    },
}
TEST_ACC_OFFSET = {"learned": 70.0, "fixed_etf": 75.0, "nearest_etf": 80.0}
SOLVER_MS = {1: 1.0, 2: 2.0, 3: 4.0}  # nearest_etf only; mean over runs = 7/3


def train_acc(epoch: int, crossings: tuple, seed: int) -> float:
    """85 before the 90% crossing, exactly 90 (>= is inclusive) up to the 95% one, 96, then 99 + seed/10."""
    e90, e95, e99 = (math.inf if c is None else c for c in crossings)
    if epoch < e90:
        return 85.0
    if epoch < e95:
        return 90.0
    if epoch < e99:
        return 96.0
    return 99.0 + 0.1 * seed


def write_config(run_dir: Path, cfg: dict, state: str = "finished") -> None:
    """The run's record; state finished (the marker etf-train writes at the end), failed (with a reason) or unfinished."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    if state != "unfinished":
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / state).write_text("diverged at epoch 1, step 2" if state == "failed" else "")


def write_events(run_dir: Path, scalars: dict[str, dict[int, float]], walltime0: float = 1000.0) -> None:
    writer = SummaryWriter(log_dir=str(run_dir))
    for tag, curve in scalars.items():
        for step, value in curve.items():
            writer.add_scalar(tag, value, global_step=step, walltime=walltime0 + step)
    writer.close()


def make_run(run_dir: Path, head: str, seed: int, dataset: str = "cifar10", **extra) -> Path:
    epochs, crossings, nc1 = SWEEP[head][seed]
    write_config(run_dir, {"seed": seed, "head": {"name": head, **extra}, "dataset": {"name": dataset},
                           "backbone": {"arch": "resnet18"}})
    scalars = {
        "train/acc": {e: train_acc(e, crossings, seed) for e in range(1, epochs + 1)},
        "test/acc": {e: TEST_ACC_OFFSET[head] + seed for e in range(1, epochs + 1)},
        "train/loss": {e: 2.0 / e for e in range(1, epochs + 1)},
        "nc/nc1": dict(zip(NC1_EPOCHS, nc1)),
        "nc/nc3": {e: 0.5 ** e for e in NC1_EPOCHS[: len(nc1)]},
        "nc/equinorm_h": {e: 0.1 + 0.01 * seed for e in NC1_EPOCHS[: len(nc1)]},
    }
    if head == "nearest_etf":
        # alternating around the run's mean, so a per-epoch mean is needed to get SOLVER_MS[seed]
        scalars["solver/ms"] = {e: SOLVER_MS[seed] * (1.5 if e % 2 else 0.5) for e in range(1, epochs + 1)}
    write_events(run_dir, scalars)
    return run_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """outputs/multirun/<date>/<time>/<job>/ with 3 heads x 3 seeds."""
    root = tmp_path_factory.mktemp("outputs") / "multirun" / "2024-01-01" / "12-00-00"
    job = 0
    for head, seeds in SWEEP.items():
        for seed in seeds:
            make_run(root / str(job), head, seed)
            job += 1
    return root


@pytest.fixture(scope="module")
def runs(sweep):
    return load_runs([sweep])


def test_spread_format_never_ranks_last():
    assert Spread((10.0, 11.0, math.inf)).format("g") == "11 [10, never]"
    assert Spread((9.0, math.inf, math.inf)).format("g") == "never [9, never]"
    assert Spread((math.inf, math.inf)).format("g") == "never"
    assert Spread((4.0, 5.0)).format("g") == "4.5 [4, 5]"
    assert Spread((10.0, math.inf)).median == math.inf
    assert Spread((10.0, math.inf, 7.0)).reached == 2


def test_threshold_epochs_and_finals(runs):
    groups = group_runs(runs, ["head"])
    assert list(groups) == ["fixed_etf", "learned", "nearest_etf"]
    assert [len(g) for g in groups.values()] == [3, 3, 3]
    s = {label: summarize(label, rs, [90, 95, 99], [1.0, 0.1, 0.01]) for label, rs in groups.items()}

    learned = s["learned"]
    assert learned.acc_epochs[90].values == (3, 4, 5)  # sorted by path = by seed here
    assert learned.acc_epochs[99].values == (10, 11, math.inf)
    assert [learned.acc_epochs[t].format("g") for t in (90, 95, 99)] == ["4 [3, 5]", "7 [6, 8]", "11 [10, never]"]
    # NC1 == 1.0 exactly at epoch 6 for seed 2 counts (<= is inclusive); only logged epochs count.
    assert [learned.nc1_epochs[t].format("g") for t in (1.0, 0.1, 0.01)] == ["6 [6, 8]", "never", "never"]
    assert learned.final_train_acc.format(".2f") == "99.10 [96.00, 99.20]"
    assert learned.final_test_acc.format(".2f") == "72.00 [71.00, 73.00]"
    assert learned.solver_ms is None

    fixed = s["fixed_etf"]
    assert [fixed.acc_epochs[t].format("g") for t in (90, 95, 99)] == ["2 [2, 3]", "5 [4, 5]", "never [9, never]"]
    assert fixed.acc_epochs[99].reached == 1
    # seed 2 logs nc1 = 0.1 at epoch 8: it reaches <= 0.1 there despite float32 storage
    assert [fixed.nc1_epochs[t].format("g") for t in (1.0, 0.1, 0.01)] == ["4 [2, 4]", "8 [8, 8]", "never [12, never]"]

    nearest = s["nearest_etf"]
    assert [nearest.acc_epochs[t].format("g") for t in (90, 95, 99)] == ["1 [1, 2]", "3 [2, 3]", "5 [4, 6]"]
    assert [nearest.nc1_epochs[t].format("g") for t in (1.0, 0.1, 0.01)] == ["2 [2, 2]", "4 [4, 6]", "8 [6, 8]"]
    assert nearest.epochs.format("g") == "12 [10, 12]"
    assert nearest.final_train_acc.values == pytest.approx((99.1, 99.2, 99.3))
    assert nearest.solver_ms == pytest.approx(7 / 3)


def test_epoch_stats_unequal_lengths(runs):
    nearest = group_runs(runs, ["head"])["nearest_etf"]
    st = epoch_stats(nearest, "train/acc")
    np.testing.assert_array_equal(st.epochs, np.arange(1, 13))
    np.testing.assert_array_equal(st.count, [3] * 10 + [2, 2])
    # epoch 2: seed 1 at 96 (crossed 95 at 2), seeds 2 and 3 at 90
    assert (st.median[1], st.min[1], st.max[1]) == (90.0, 90.0, 96.0)
    # epoch 11: only seeds 1 and 2 (99.1, 99.2) -> the median of two is their mean
    assert st.median[10] == pytest.approx(99.15)
    assert (st.min[10], st.max[10]) == pytest.approx((99.1, 99.2))
    nc1 = epoch_stats(nearest, "nc/nc1")
    np.testing.assert_array_equal(nc1.epochs, NC1_EPOCHS)
    assert nc1.median[2] == pytest.approx(0.02) and nc1.max[2] == pytest.approx(0.05)
    assert epoch_stats(group_runs(runs, ["head"])["learned"], "solver/ms").epochs.size == 0


def test_main_writes_md_csv_png(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    md = (out / "comparison.md").read_text()
    for label in SWEEP:
        assert label in stdout and label in md
    assert "| learned | 3/3 | 12 [12, 12] | 4 [3, 5] | 7 [6, 8] | 11 [10, never] | 6 [6, 8] | never | never |" in md
    assert "| nearest_etf |" in md and "| 2.333 |" in md

    with (out / "comparison.csv").open() as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(SWEEP)
    assert float(rows["learned"]["epochs_to_train_acc_ge_99_max"]) == math.inf
    assert int(rows["learned"]["epochs_to_train_acc_ge_99_reached"]) == 2
    assert float(rows["fixed_etf"]["epochs_to_nc1_le_0.01_min"]) == 12
    assert rows["learned"]["solver_ms_per_step"] == ""

    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 400_000


def test_log_scale_decision():
    assert compare.spans_decades(np.array([1.0, 0.01]))
    assert not compare.spans_decades(np.array([1.0, 0.1]))
    assert not compare.spans_decades(np.array([0.0, 10.0, 1000.0]))


def test_group_by_other_key(tmp_path, capsys):
    for job, (backward, seed) in enumerate([("polar", 1), ("polar", 2), ("none", 1), ("none", 2)]):
        make_run(tmp_path / str(job), "nearest_etf", seed, backward=backward)
    groups = group_runs(load_runs([tmp_path]), ["head", "head.backward"])
    assert list(groups) == ["nearest_etf/none", "nearest_etf/polar"]
    assert [sorted(r.config.seed for r in g) for g in groups.values()] == [[1, 2], [1, 2]]

    # grouping by head alone tells the head's variants apart by the options that differ (presets never pool)
    assert list(group_runs(load_runs([tmp_path]), ["head"])) == ["nearest_etf (backward=none)",
                                                                 "nearest_etf (backward=polar)"]
    # a key outside the head that differs within a group pools two settings under one seed: warned, naming it
    for job in (2, 3):
        config = OmegaConf.load(tmp_path / str(job) / ".hydra" / "config.yaml")
        config.head.backward, config.optimizer = "polar", {"lr": 0.5}
        OmegaConf.save(config, tmp_path / str(job) / ".hydra" / "config.yaml")
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    err = capsys.readouterr().err
    assert "group 'nearest_etf' holds 2 runs with seed 1" in err and "optimizer" in err
    assert (tmp_path / "comparison.md").is_file()  # --out defaults to the first folder


def test_group_key_missing_in_some_runs(tmp_path):
    make_run(tmp_path / "a", "nearest_etf", 1, backward="polar")
    make_run(tmp_path / "b", "learned", 1)
    assert list(group_runs(load_runs([tmp_path]), ["head", "head.backward"])) == ["learned/-", "nearest_etf/polar"]


def test_resume_merges_event_files_later_walltime_wins(tmp_path):
    run = tmp_path / "run"
    write_config(run, {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "cifar10"}})
    # written first (its file sorts first) but with the later wall times: the resumed part
    write_events(run, {"train/acc": {e: 50.0 + e for e in range(4, 9)}}, walltime0=5000.0)
    write_events(run, {"train/acc": {e: 10.0 + e for e in range(1, 6)}}, walltime0=1000.0)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    steps, values = read_scalars(run)["train/acc"]
    np.testing.assert_array_equal(steps, np.arange(1, 9))
    np.testing.assert_array_equal(values, [11, 12, 13, 54, 55, 56, 57, 58])


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("etf-compare: error: ")
    return err


def test_error_missing_folder(tmp_path, capsys):
    assert f"folder does not exist: {tmp_path / 'nope'}" in error_of([str(tmp_path / "nope")], capsys)


def test_error_no_runs(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert f"error: no runs under {tmp_path}" in capsys.readouterr().err
    write_config(tmp_path / "crashed", {"seed": 1}, state="unfinished")  # died before its first epoch
    assert main([str(tmp_path)]) == 2
    assert f"error: no finished runs under {tmp_path} (1 unfinished or failed)" in capsys.readouterr().err


def test_error_missing_scalar(tmp_path, capsys):
    run = tmp_path / "run"
    write_config(run, {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "cifar10"}})
    write_events(run, {"train/acc": {1: 50.0}, "test/acc": {1: 40.0}})
    err = error_of([str(tmp_path), "--metrics", "train/acc"], capsys)
    assert f"run {run} has no scalar 'nc/nc1'" in err
    # without NC1 thresholds the same run is fine
    assert main([str(tmp_path), "--metrics", "train/acc", "--nc1-thresholds"]) == 0


def test_error_solver_time_missing_in_part_of_a_group(tmp_path):
    make_run(tmp_path / "a", "nearest_etf", 1)
    make_run(tmp_path / "b", "learned", 2)
    runs = load_runs([tmp_path])
    assert summarize("x", [runs[1]], [90], []).solver_ms is None  # a group without a solver: fine
    with pytest.raises(EtfTrainError, match=f"run {tmp_path / 'b'} has no scalar 'solver/ms'"):
        summarize("x", runs, [90], [])


def test_run_folder_given_directly(sweep):
    assert [r.path for r in load_runs([sweep / "4"])] == [sweep / "4"]


def test_error_missing_plot_metric(sweep, tmp_path, capsys):
    err = error_of([str(sweep), "--out", str(tmp_path), "--metrics", "nc/nc9"], capsys)
    assert "no run has scalar 'nc/nc9'" in err


def test_error_mixed_datasets(tmp_path, capsys):
    make_run(tmp_path / "a", "learned", 1, dataset="cifar10")
    make_run(tmp_path / "b", "learned", 2, dataset="cifar100")
    err = error_of([str(tmp_path)], capsys)
    assert "cifar10 (1 runs" in err and "cifar100 (1 runs" in err and "--allow-mixed" in err
    assert main([str(tmp_path), "--allow-mixed"]) == 0


def test_error_fraction_threshold(sweep, capsys):
    assert "in percent: 90?" in error_of([str(sweep), "--acc-thresholds", "0.9"], capsys)


def test_python_m_help():
    res = subprocess.run([sys.executable, "-m", "etf_train.compare", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--group-by" in res.stdout and "--nc1-thresholds" in res.stdout


def test_final_accuracy_is_the_last_epoch_not_the_best(tmp_path, capsys):
    """Catches "final" taken as the best (max) or any epoch other than the last logged one."""
    run = tmp_path / "run"
    write_config(run, {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "synthetic"}})
    train = {1: 50.0, 2: 80.0, 3: 97.5, 4: 62.5}  # peak at epoch 3, drop at epoch 4 (float32-exact values)
    test = {1: 40.0, 2: 60.0, 3: 75.5, 4: 55.25}
    write_events(run, {
        "train/acc": train,
        "test/acc": test,
        "train/loss": {e: 2.0 / e for e in train},
        "train/eval_acc": {e: v - 1.0 for e, v in train.items()},
        "nc/nc1": {e: 1.0 / e for e in train},
        "nc/nc3": {e: 0.5 ** e for e in train},
        "nc/equinorm_h": {e: 0.1 for e in train},
    })
    out = tmp_path / "report"
    assert main([str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    with (out / "comparison.csv").open() as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["learned"] and int(rows["learned"]["runs"]) == 1
    row = rows["learned"]
    assert float(row["epochs_median"]) == 4
    for stat in ("median", "min", "max"):
        assert float(row[f"final_train_acc_{stat}"]) == train[4], stat
        assert float(row[f"final_test_acc_{stat}"]) == test[4], stat
    assert "62.50 [62.50, 62.50] | 55.25 [55.25, 55.25]" in (out / "comparison.md").read_text()


def test_only_finished_runs_count_and_broken_ones_are_listed(tmp_path, capsys):
    """A run killed at epoch 3 of 12 must not enter the finals or the epoch counts, and a job that failed in its
    first epoch (no scalars at all) must not stop the comparison of the others."""
    for seed in (1, 2):
        make_run(tmp_path / f"learned-{seed}", "learned", seed)
    killed = tmp_path / "learned-3"
    write_config(killed, {"seed": 3, "head": {"name": "learned"}, "dataset": {"name": "cifar10"},
                          "trainer": {"max_epochs": 12}}, state="unfinished")
    write_events(killed, {"train/acc": {e: 99.9 for e in (1, 2, 3)}, "test/acc": {e: 99.9 for e in (1, 2, 3)},
                          "nc/nc1": {2: 0.001}})
    failed = tmp_path / "nearest-1"
    write_config(failed, {"seed": 1, "head": {"name": "nearest_etf"}, "dataset": {"name": "cifar10"}}, state="failed")
    assert main([str(tmp_path), "--metrics", "train/acc", "--out", str(tmp_path / "a")]) == 0
    md = (tmp_path / "a" / "comparison.md").read_text()
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "a" / "comparison.csv").open())}
    assert (rows["learned"]["runs"], rows["learned"]["runs_finished"], rows["learned"]["runs_total"]) == ("2", "2", "3")
    assert float(rows["learned"]["final_test_acc_max"]) < 99  # the killed run's 99.9 is not a final
    assert float(rows["learned"]["epochs_min"]) == 12
    assert (rows["nearest_etf"]["runs_finished"], rows["nearest_etf"]["runs_total"]) == ("0", "1")
    assert "| nearest_etf | 0/1 | - |" in md
    assert f"- {killed}: unfinished at epoch 3 of 12" in md
    assert f"- {failed}: failed at epoch 0 (diverged at epoch 1, step 2)" in md

    assert main([str(tmp_path), "--metrics", "train/acc", "--include-unfinished", "--out", str(tmp_path / "b")]) == 0
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "b" / "comparison.csv").open())}
    assert rows["learned"]["runs"] == "3" and float(rows["learned"]["final_test_acc_max"]) == pytest.approx(99.9)
    assert "2/3 (+1 unfinished counted)" in (tmp_path / "b" / "comparison.md").read_text()
