"""etf-compare against hand-made runs written with the real SummaryWriter and OmegaConf."""

from __future__ import annotations

import csv
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from etf_train import compare
from etf_train.compare import (
    RecordedRun,
    Spread,
    epoch_stats,
    figure,
    group_runs,
    load_runs,
    main,
    read_scalars,
    summarize,
    thresholds,
)
from etf_train.compare.plot import COLORS
from etf_train.errors import EtfTrainError
from etf_train.rundir import RunState

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
EVAL_EVERY = {"learned": 2, "fixed_etf": 1, "nearest_etf": 1}  # metrics.every_n_epochs: when train/eval_acc is logged
TEST_ACC_CAP = {"learned": 88.0, "fixed_etf": 92.0, "nearest_etf": 96.0}  # test/acc = min(50 + 5 epoch, cap + seed)
SOLVER_MS = {1: 1.0, 2: 2.0, 3: 4.0}  # nearest_etf only, after a 40 ms warm-up epoch; median [min, max] = 2 [1, 4]


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


def eval_acc(epoch: int, crossings: tuple, seed: int) -> float:
    """Eval mode on un-augmented images: train/acc one epoch later, plus 0.25 (so each threshold comes 1 epoch later
    than on train/acc, rounded up to a logged epoch, and the finals differ)."""
    return train_acc(epoch - 1, crossings, seed) + 0.25


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
    every = EVAL_EVERY[head]
    write_config(
        run_dir,
        {
            "seed": seed,
            "head": {"name": head, **extra},
            "dataset": {"name": dataset},
            "backbone": {"name": "resnet18"},
            "optimizer": {"_target_": "torch.optim.SGD"},
            "loss": {"name": "ce"},
            "metrics": {"every_n_epochs": every},
        },
    )
    scalars = {
        "train/acc": {e: train_acc(e, crossings, seed) for e in range(1, epochs + 1)},
        "train/eval_acc": {e: eval_acc(e, crossings, seed) for e in range(every, epochs + 1, every)},
        "test/acc": {e: min(50.0 + 5 * e, TEST_ACC_CAP[head] + seed) for e in range(1, epochs + 1)},
        "train/loss": {e: 2.0 / e for e in range(1, epochs + 1)},
        "nc/nc1": dict(zip(NC1_EPOCHS, nc1)),
        "nc/nc3": {e: 0.5**e for e in NC1_EPOCHS[: len(nc1)]},
        "nc/equinorm_h": {e: 0.1 + 0.01 * seed for e in NC1_EPOCHS[: len(nc1)]},
    }
    if head == "nearest_etf":
        scalars["solver/ms"] = {e: 40.0 if e == 1 else SOLVER_MS[seed] for e in range(1, epochs + 1)}
    write_events(run_dir, scalars)
    return run_dir


def fake_run(path: str, config: dict, scalars: dict[str, dict[int, float]], status: str = "finished") -> RecordedRun:
    """A run in memory (no event files), finished unless told, for the numbers that need no TensorBoard round trip."""
    curves = {
        tag: (np.array(list(c), dtype=np.int64), np.array(list(c.values()), dtype=np.float64))
        for tag, c in scalars.items()
    }
    return RecordedRun(Path(path), OmegaConf.create(config), curves, RunState(status))


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


@pytest.fixture(scope="module")
def groups(runs):
    return group_runs(runs, ["head"])


def summaries(groups, acc_tag="train/eval_acc") -> dict:
    limits = thresholds(acc_tag, [90, 95, 99], [90, 95, 99], [1.0, 0.1, 0.01])
    return {label.removeprefix("head="): summarize(label, rs, limits, acc_tag) for label, rs in groups.items()}


def cells(summary, tag: str) -> list[str]:
    return [sp.format("g") for t, sp in summary.reached.items() if t.tag == tag]


def test_spread_format_never_ranks_last():
    """Catches `never` (inf) ranked as a small number, or an even count's median not being the middle two's mean."""
    assert Spread((10.0, 11.0, math.inf)).format("g") == "11 [10, never]"
    assert Spread((9.0, math.inf, math.inf)).format("g") == "never [9, never]"
    assert Spread((math.inf, math.inf)).format("g") == "never"
    assert Spread((4.0, 5.0)).format("g") == "4.5 [4, 5]"
    assert Spread((10.0, math.inf)).median == math.inf
    assert Spread((10.0, math.inf, 7.0)).reached == 2


def test_thresholds_on_eval_acc_and_test_acc(groups):
    """Catches thresholds read from train/acc instead of train/eval_acc, or on eval_acc's unlogged epochs."""
    assert list(groups) == ["head=fixed_etf", "head=learned", "head=nearest_etf"]
    assert [len(g) for g in groups.values()] == [3, 3, 3]
    s = summaries(groups)

    # learned logs train/eval_acc at even epochs: crossings at 4,5,6 / 7,8,9 / 11,12,- count as 4,6,6 / 8,8,10 / ...
    assert cells(s["learned"], "train/eval_acc") == ["6 [4, 6]", "8 [8, 10]", "12 [12, never]"]
    assert cells(s["fixed_etf"], "train/eval_acc") == ["3 [3, 4]", "6 [5, 6]", "never [10, never]"]
    assert cells(s["nearest_etf"], "train/eval_acc") == ["2 [2, 3]", "4 [3, 4]", "6 [5, 7]"]
    # test/acc = min(50 + 5e, cap + seed): >= 90 at epoch 8, >= 95 at 9, >= 99 at 10, where the cap allows
    assert cells(s["learned"], "test/acc") == ["8 [8, never]", "never", "never"]
    assert cells(s["fixed_etf"], "test/acc") == ["8 [8, 8]", "never [9, never]", "never"]
    assert cells(s["nearest_etf"], "test/acc") == ["8 [8, 8]", "9 [9, 9]", "never [10, never]"]
    assert [t.header for t in s["learned"].reached][::3] == ["train/eval_acc >= 90%", "test/acc >= 90%", "NC1 <= 1"]


def test_nc1_thresholds_and_finals(groups):
    """Catches NC1 counted between logged epochs or with a strict <=, and finals from train/acc or not the last."""
    s = summaries(groups)
    learned, fixed, nearest = s["learned"], s["fixed_etf"], s["nearest_etf"]
    # NC1 == 1.0 exactly at epoch 6 for seed 2 counts (<= is inclusive); only logged epochs count.
    assert cells(learned, "nc/nc1") == ["6 [6, 8]", "never", "never"]
    # seed 2 logs nc1 = 0.1 at epoch 8: it reaches <= 0.1 there despite float32 storage
    assert cells(fixed, "nc/nc1") == ["4 [2, 4]", "8 [8, 8]", "never [12, never]"]
    assert cells(nearest, "nc/nc1") == ["2 [2, 2]", "4 [4, 6]", "8 [6, 8]"]
    assert learned.finals["train/eval_acc"].format(".2f") == "99.35 [96.25, 99.45]"
    assert learned.finals["test/acc"].format(".2f") == "90.00 [89.00, 91.00]"
    assert nearest.finals["train/eval_acc"].values == pytest.approx((99.35, 99.45, 99.55))
    assert nearest.epochs.format("g") == "12 [10, 12]"


def test_train_acc_only_when_asked_and_labelled(groups, sweep, tmp_path, capsys):
    """Catches train/acc (measured during training) used by default, or used without saying so."""
    s = summaries(groups, acc_tag="train/acc")
    assert cells(s["learned"], "train/acc") == ["4 [3, 5]", "7 [6, 8]", "11 [10, never]"]
    assert s["learned"].finals["train/acc"].format(".2f") == "99.10 [96.00, 99.20]"
    assert all("train/acc" not in t.tag for t in summaries(groups)["learned"].reached)
    assert figure(groups, ["train/acc"]).axes[0].get_title() == "train accuracy (during training)"

    assert main([str(sweep), "--out", str(tmp_path), "--acc-tag", "train/acc", "--metrics", "train/acc"]) == 0
    capsys.readouterr()
    md = (tmp_path / "comparison.md").read_text()
    assert "| train/acc (measured during training) >= 90% |" in md
    assert "| final train/acc (measured during training) % |" in md and "flatters early epochs" in md
    with (tmp_path / "comparison.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["group"] == "head=learned")
    assert float(row["epochs_to_train_acc_measured_during_training_ge_90_median"]) == 4
    assert float(row["final_train_acc_measured_during_training_max"]) == pytest.approx(99.2)


def test_solver_ms_median_over_runs_without_the_warm_up_epoch(groups):
    """Catches the solver time as a mean over runs, or one that keeps the first (warm-up) epoch of longer runs."""
    assert summaries(groups)["nearest_etf"].solver_ms.format(".3f") == "2.000 [1.000, 4.000]"
    config = {"seed": 1, "head": {"name": "nearest_etf"}}
    accs = {"train/eval_acc": {1: 50.0}, "test/acc": {1: 40.0}}
    runs = [
        fake_run("a", config, {**accs, "solver/ms": {1: 30.0, 2: 1.0, 3: 2.0, 4: 6.0}}),  # (1 + 2 + 6) / 3 = 3
        fake_run("b", config, {**accs, "solver/ms": {1: 9.0}}),  # one epoch: it is the run's mean
    ]
    s = summarize("x", runs, thresholds("train/eval_acc", [90], [], []), "train/eval_acc")
    assert s.solver_ms.values == (3.0, 9.0) and s.solver_ms.format(".3f") == "6.000 [3.000, 9.000]"


def test_epoch_stats_unequal_lengths(groups):
    """Catches per-epoch statistics that drop epochs only some runs reach, or pad them with zeros."""
    nearest = groups["head=nearest_etf"]
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
    assert epoch_stats(groups["head=learned"], "solver/ms").epochs.size == 0


# the default thresholds, as (tag, comparison, values)
THRESHOLDS = (("train_eval_acc", "ge", (90, 95, 99)), ("test_acc", "ge", (90, 95, 99)), ("nc1", "le", (1, 0.1, 0.01)))
CSV_HEADER = (
    ["group", "runs", "runs_finished", "runs_total", "epochs_median", "epochs_min", "epochs_max"]
    + [
        f"epochs_to_{tag}_{op}_{t}_{stat}"
        for tag, op, ts in THRESHOLDS
        for t in ts
        for stat in ("median", "min", "max", "reached")
    ]
    + [
        f"{name}_{stat}"
        for name in ("final_train_eval_acc", "final_test_acc", "solver_ms_per_step")
        for stat in ("median", "min", "max")
    ]
    + [
        f"speedup_{tag}_{op}_{t}_{stat}"
        for tag, op, ts in THRESHOLDS
        for t in ts
        for stat in ("median", "min", "max", "pairs")
    ]  # over the baseline, head=learned
)


def test_main_writes_md_csv_png(sweep, tmp_path, capsys):
    """Catches table rows, CSV columns or the default 150-dpi PNG drifting from the numbers and names above."""
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"compare: tensorboard --logdir {sweep}    then open http://localhost:6006/?smoothing=0" in stdout
    md = (out / "comparison.md").read_text()
    for head in SWEEP:  # the terminal's compact table names groups readably; the file keeps the exact labels
        assert f"\n{head} " in stdout and f"| head={head} |" in md
    assert (
        "| head=learned | 3/3 | 12 [12, 12] | 6 [4, 6] | 8 [8, 10] | 12 [12, never] | 8 [8, never] | never | never"
        " | 6 [6, 8] | never | never | 99.35 [96.25, 99.45] | 90.00 [89.00, 91.00] | - |"
    ) in md
    assert "| 2.000 [1.000, 4.000] |" in md and "their threshold epochs have that interval as resolution" in md

    with (out / "comparison.csv").open() as f:
        reader = csv.DictReader(f)
        rows = {r["group"]: r for r in reader}
    assert reader.fieldnames == CSV_HEADER
    assert set(rows) == {f"head={h}" for h in SWEEP}
    learned, nearest = rows["head=learned"], rows["head=nearest_etf"]
    assert float(learned["epochs_to_train_eval_acc_ge_99_max"]) == math.inf
    assert int(learned["epochs_to_train_eval_acc_ge_99_reached"]) == 2
    assert int(learned["epochs_to_test_acc_ge_90_reached"]) == 2
    assert float(rows["head=fixed_etf"]["epochs_to_nc1_le_0.01_min"]) == 12
    assert learned["solver_ms_per_step_median"] == ""
    assert [float(nearest[f"solver_ms_per_step_{s}"]) for s in ("median", "min", "max")] == [2, 1, 4]

    png = (out / "comparison.png").read_bytes()
    width = struct.unpack(">I", png[16:20])[0]  # IHDR
    assert png.startswith(b"\x89PNG") and width == 3 * 4.5 * 150 and len(png) < 600_000


def test_tensorboard_command_for_several_folders_is_one_tensorboard_accepts(tmp_path):
    """`tensorboard --logdir A B` is an argparse error: two folders need --logdir_spec, parsed here by TensorBoard's
    own parser; job folders (with commas, which split a spec) fall back to their common parent."""
    import shlex

    from tensorboard.backend.event_processing.data_ingester import _parse_event_files_spec

    from etf_train.view import how_to_look

    a, b = tmp_path / "sgd" / "sweep", tmp_path / "agd" / "sweep"
    words = shlex.split(how_to_look([a, b]).split("    then")[0])
    assert words[:2] == ["compare:", "tensorboard"] and words[2] == "--logdir_spec"
    assert _parse_event_files_spec(words[3]) == {str(a): "0", str(b): "1"}
    words = shlex.split(how_to_look([tmp_path / "x", tmp_path / "y z"]).split("    then")[0])
    assert _parse_event_files_spec(words[3]) == {str(tmp_path / "x"): "x", str(tmp_path / "y z"): "y z"}
    jobs = [tmp_path / "s" / "head=learned,seed=1", tmp_path / "s" / "head=nearest_etf,seed=1"]
    assert how_to_look(jobs).startswith(f"compare: tensorboard --logdir {tmp_path / 's'}    then")
    assert how_to_look(jobs).endswith(f"(every run under {tmp_path / 's'} shows, not only the compared ones)")
    assert "every run under" not in how_to_look([a, b])


@pytest.mark.parametrize("fmt, magic", [("pdf", b"%PDF"), ("svg", b"<svg")])
def test_figure_format(sweep, tmp_path, capsys, fmt, magic):
    """Catches --format ignored (a PNG under another name, or written as comparison.png)."""
    assert main([str(sweep), "--out", str(tmp_path), "--format", fmt, "--metrics", "train/eval_acc"]) == 0
    assert f"comparison.{fmt}" in capsys.readouterr().out
    assert magic in (tmp_path / f"comparison.{fmt}").read_bytes()[:400]
    assert not (tmp_path / "comparison.png").exists()


def test_figure_title_labels_legend_styles_markers(groups):
    """Catches an untitled figure, unlabelled axes, bare legend labels, colour-only styles, unmarked sparse points."""
    metrics = ["train/eval_acc", "test/acc", "train/loss", "nc/nc1", "nc/nc3", "nc/equinorm_h", "solver/ms"]
    fig = figure(groups, metrics)
    assert fig._suptitle.get_text() == (
        "cifar10 · backbone resnet18 · SGD · 10/12 epochs · 3 seeds per group · "
        "line = median, band = min-max over seeds"
    )
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "train accuracy (eval mode)",
        "test accuracy",
        "train loss",
        "NC1: within-class variability",
        "NC3: classifier vs class means",
        "class-mean norms (std / mean)",
        "ETF solve time",
    ]
    assert [ax.get_ylabel() for ax in axes] == [
        "accuracy (%)",
        "accuracy (%)",
        "cross-entropy",
        "tr(S_W S_B⁺) / K",
        "distance of W to the class means",
        "std / mean of the class-mean norms",
        "ms per step",
    ]
    assert [ax.get_yscale() for ax in axes[:5]] == ["linear", "linear", "linear", "log", "log"]  # loss: 1.1 decades
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["fixed_etf (n=3)", "learned (n=3)", "nearest_etf (n=3)"]
    assert [h.get_marker() for h in legend.legend_handles] == ["o", "s", "^"]  # each group has sparse curves (NC)
    lines = axes[0].get_lines()
    assert len({(ln.get_color(), str(ln.get_linestyle())) for ln in lines}) == 3
    assert {ln.get_color() for ln in lines} <= set(COLORS)
    assert len({str(ln.get_linestyle()) for ln in lines}) == 3  # distinct without colour
    # train/eval_acc: learned logs it every 2 epochs (markers), the others every epoch (a plain line)
    assert [ln.get_marker() for ln in lines] == ["None", "s", "None"]
    assert all(ln.get_marker() != "None" for ln in axes[3].get_lines())  # NC metrics: every 2 epochs
    assert all(ln.get_marker() == "None" for ln in axes[1].get_lines())


def test_figure_title_says_mixed_loss_name_and_marks_sparse_tails():
    """Catches a title naming one optimizer for runs that differ, a loss label ignoring loss.name, and no markers on a
    metric logged every 2 of 3 epochs (at 2 and 3: no gap between its points)."""
    scalars = {"train/loss": {1: 1.0, 2: 0.5, 3: 0.25}, "nc/nc1": {2: 1.0, 3: 0.5}}
    base = {"dataset": {"name": "ufm"}, "backbone": {"name": "ufm"}, "loss": {"name": "mse"}}
    runs = {
        "head=learned": [fake_run("a", {**base, "optimizer": {"_target_": "torch.optim.SGD"}}, scalars)],
        "head=nearest_etf": [
            fake_run(p, {**base, "optimizer": {"_target_": "etf_train.training.agd.AGD"}}, scalars) for p in ("b", "c")
        ],
    }
    fig = figure(runs, ["train/loss", "nc/nc1"])
    assert fig._suptitle.get_text().startswith("UFM · backbone ufm · SGD / AGD · 3 epochs · 1-2 seeds per group")
    assert fig.axes[0].get_ylabel() == "mse loss"
    assert [ln.get_marker() for ln in fig.axes[0].get_lines()] == ["None", "None"]
    assert [ln.get_marker() for ln in fig.axes[1].get_lines()] == ["o", "s"]


def test_log_scale_decision():
    """Catches a log axis for values that span little or include zero."""
    assert compare.spans_decades(np.array([1.0, 0.01]))
    assert not compare.spans_decades(np.array([1.0, 0.1]))
    assert not compare.spans_decades(np.array([0.0, 10.0, 1000.0]))


def test_group_by_other_key(tmp_path, capsys):
    """Catches head variants pooled, group labels that do not spell out their keys, or a silent seed collision."""
    for job, (backward, seed) in enumerate([("polar", 1), ("polar", 2), ("none", 1), ("none", 2)]):
        make_run(tmp_path / str(job), "nearest_etf", seed, backward=backward)
    groups = group_runs(load_runs([tmp_path]), ["head", "head.backward"])
    assert list(groups) == ["head=nearest_etf, head.backward=none", "head=nearest_etf, head.backward=polar"]
    assert [sorted(r.config.seed for r in g) for g in groups.values()] == [[1, 2], [1, 2]]

    # grouping by head alone tells the head's variants apart by the options that differ (presets never pool)
    assert list(group_runs(load_runs([tmp_path]), ["head"])) == list(groups)
    # a key outside the head that differs within a group pools two settings under one seed: warned, naming it
    for job in (2, 3):
        config = OmegaConf.load(tmp_path / str(job) / ".hydra" / "config.yaml")
        config.head.backward, config.backbone.width = "polar", 16
        OmegaConf.save(config, tmp_path / str(job) / ".hydra" / "config.yaml")
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    err = capsys.readouterr().err
    assert "group 'head=nearest_etf' pools runs with other settings than the seed" in err
    assert "backbone.width: (unset) -> 16" in err and err.count("pools runs") == 1
    assert (tmp_path / "comparison.md").is_file()  # --out defaults to the first folder


def test_runs_with_other_settings_and_other_seeds_are_not_pooled_in_silence(tmp_path, capsys):
    """Only same-seed collisions used to be reported: seed 1 at lr 0.05 and seed 2 at lr 0.5 made one silent median.
    Neutral keys (progress bar, workers) may differ; the same run given twice is named too."""
    for seed in (1, 2):
        make_run(tmp_path / f"a{seed}", "learned", seed)
    config = OmegaConf.load(tmp_path / "a2" / ".hydra" / "config.yaml")
    config.trainer = {"progress": False}  # neutral: no message
    OmegaConf.save(config, tmp_path / "a2" / ".hydra" / "config.yaml")
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "pools runs" not in capsys.readouterr().err
    config.optimizer.lr = 0.5
    OmegaConf.save(config, tmp_path / "a2" / ".hydra" / "config.yaml")
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    err = capsys.readouterr().err
    assert "group 'head=learned, optimizer.lr=0.5' pools" not in err  # optimiser options split the groups instead
    assert "head=learned, optimizer.lr=0.5" in (tmp_path / "comparison.md").read_text()
    config.optimizer.lr, config.loss = None, {"name": "mse"}
    del config.optimizer["lr"]
    OmegaConf.save(config, tmp_path / "a2" / ".hydra" / "config.yaml")
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    err = capsys.readouterr().err
    assert "group 'head=learned' pools runs with other settings than the seed" in err and "loss.name: ce -> mse" in err
    make_run(tmp_path / "a1-again", "learned", 1)
    assert main([str(tmp_path / "a1"), str(tmp_path / "a1-again"), "--metrics", "train/acc"]) == 0
    assert "holds seed 1 twice" in capsys.readouterr().err


def _set(run: Path, **dotted) -> None:
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    for key, value in dotted.items():
        OmegaConf.update(config, key.replace("__", "."), value)
    OmegaConf.save(config, run / ".hydra" / "config.yaml")


def test_groups_that_differ_in_more_than_their_labels_are_named(tmp_path, capsys):
    """Only runs inside one group were checked: learned on K=100 with label noise against fixed_etf on clean K=10
    made a head-vs-head table in silence, as did metrics every epoch against every 5 (threshold epochs 5x coarser)."""
    for head in ("learned", "fixed_etf"):
        for seed in (1, 2):
            _set(make_run(tmp_path / f"{head}{seed}", head, seed), metrics__every_n_epochs=1)
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "differ in more than their labels" not in capsys.readouterr().err  # heads differ in head.* only
    for seed in (1, 2):
        _set(tmp_path / f"learned{seed}", dataset__num_classes=100, dataset__label_noise=0.2)
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    err = capsys.readouterr().err
    assert "groups 'head=fixed_etf' and 'head=learned' differ in more than their labels" in err
    assert "dataset.label_noise: (unset) -> 0.2" in err and "dataset.num_classes: (unset) -> 100" in err
    for seed in (1, 2):
        _set(
            tmp_path / f"learned{seed}", dataset__num_classes=None, dataset__label_noise=None, metrics__every_n_epochs=5
        )
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "metrics.every_n_epochs: 1 -> 5" in capsys.readouterr().err
    _set(tmp_path / "learned2", metrics__every_n_epochs=1)  # and inside a group
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "group 'head=learned' pools runs with other settings than the seed" in capsys.readouterr().err


def test_an_image_folder_root_and_a_batch_centred_heads_eval_batch_are_settings_that_change_results(tmp_path, capsys):
    """dataset.root and trainer.eval_batch_size are neutral in general (where the files are, how many per eval
    batch), but an image folder is what its root holds, and head.center=batch takes the eval batch's mean: two
    folders pooled as one dataset, or eval accuracies 97.9 and 12.2 % of one training, made one silent median."""
    for seed, root in ((1, "/data/a"), (2, "/data/b")):
        _set(make_run(tmp_path / f"r{seed}", "fixed_etf", seed, dataset="image_folder"), dataset__root=root)
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "dataset.root: /data/a -> /data/b" in capsys.readouterr().err
    for seed, size in ((1, 512), (2, 3)):
        _set(tmp_path / f"r{seed}", dataset__root="/data/a", trainer__eval_batch_size=size)
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "pools runs" not in capsys.readouterr().err  # the plain fixed ETF: eval batch size is neutral
    for seed in (1, 2):
        _set(tmp_path / f"r{seed}", head__center="batch")
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "trainer.eval_batch_size: 512 -> 3" in capsys.readouterr().err


def test_runs_of_two_optimisers_never_pool_and_their_labels_name_the_optimiser(tmp_path, capsys):
    """etf-compare once pooled SGD and AGD runs of one head into one median (with only a warning): under SGD and AGD
    the heads rank differently, so such a table gave a verdict without naming the optimiser."""
    settings = {
        "sgd": {"_target_": "torch.optim.SGD", "lr": 0.05},
        "agd": {"_target_": "etf_train.training.agd.AGD", "gain": 10.0, "depth": None},
        "agd2": {"_target_": "etf_train.training.agd.AGD", "gain": 10.0, "depth": 2},
    }
    for name, optimizer in settings.items():
        for seed in (1, 2):
            run = make_run(tmp_path / f"{name}{seed}", "nearest_etf", seed)
            config = OmegaConf.load(run / ".hydra" / "config.yaml")
            config.optimizer = optimizer
            OmegaConf.save(config, run / ".hydra" / "config.yaml")
    groups = group_runs(load_runs([tmp_path]), ["head"])
    assert {label: sorted(r.path.name for r in g) for label, g in groups.items()} == {
        "head=nearest_etf, optimizer=agd, optimizer.depth=2": ["agd21", "agd22"],
        "head=nearest_etf, optimizer=agd, optimizer.depth=None": ["agd1", "agd2"],
        "head=nearest_etf, optimizer=sgd": ["sgd1", "sgd2"],
    }
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    captured = capsys.readouterr()
    assert "pools runs" not in captured.err and "twice" not in captured.err
    assert "| head=nearest_etf, optimizer=sgd | 2/2 |" in (tmp_path / "comparison.md").read_text()
    assert "\nnearest_etf, AGD, depth 2 " in captured.out  # the terminal's readable label
    # asked for by name, the optimiser is a grouping key like any other (and not spelled twice)
    assert list(group_runs(load_runs([tmp_path]), ["optimizer._target_"])) == [
        "optimizer._target_=etf_train.training.agd.AGD, optimizer.depth=2",
        "optimizer._target_=etf_train.training.agd.AGD, optimizer.depth=None",
        "optimizer._target_=torch.optim.SGD",
    ]


def test_group_key_missing_in_some_runs(tmp_path):
    """Catches a run lacking a --group-by key dropped or crashing the grouping."""
    make_run(tmp_path / "a", "nearest_etf", 1, backward="polar")
    make_run(tmp_path / "b", "learned", 1)
    assert list(group_runs(load_runs([tmp_path]), ["head", "head.backward"])) == [
        "head=learned, head.backward=-",
        "head=nearest_etf, head.backward=polar",
    ]


def test_resume_merges_event_files_later_walltime_wins(tmp_path):
    """Catches a resumed run's stale pre-crash events winning over the resumed ones."""
    run = tmp_path / "run"
    write_config(run, {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "cifar10"}})
    # written first (its file sorts first) but with the later wall times: the resumed part
    write_events(run, {"train/acc": {e: 50.0 + e for e in range(4, 9)}}, walltime0=5000.0)
    write_events(run, {"train/acc": {e: 10.0 + e for e in range(1, 6)}}, walltime0=1000.0)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    steps, values = read_scalars(run)["train/acc"]
    np.testing.assert_array_equal(steps, np.arange(1, 9))
    np.testing.assert_array_equal(values, [11, 12, 13, 54, 55, 56, 57, 58])


def test_epochs_a_crashed_attempt_logged_past_its_checkpoint_are_dropped_as_tensorboard_drops_them(tmp_path):
    """Catches read_scalars keeping a killed attempt's epochs 8 and beyond when the resumed attempt (purge_step 6,
    as Logbook writes it) stopped at 7: etf-compare would then report the discarded run's epoch 8 as the last."""
    run = tmp_path / "run"
    first = SummaryWriter(str(run), purge_step=1)
    for e in range(1, 9):
        first.add_scalar("test/acc", 10.0 * e, e)
    first.close()
    time.sleep(0.01)
    resumed = SummaryWriter(str(run), purge_step=6)
    for e in (6, 7):
        resumed.add_scalar("test/acc", 5.0 + 10.0 * e, e)
    resumed.close()
    steps, values = read_scalars(run)["test/acc"]
    reference = EventAccumulator(str(run), size_guidance={"scalars": 0})  # TensorBoard's own reading of the folder
    reference.Reload()
    assert list(steps) == [ev.step for ev in reference.Scalars("test/acc")] == [1, 2, 3, 4, 5, 6, 7]
    np.testing.assert_array_equal(values, [10, 20, 30, 40, 50, 65, 75])


def test_an_attempt_killed_before_its_first_epoch_purges_in_its_place_not_last(tmp_path):
    """Catches a file without scalars (an attempt killed before it logged, purge step 6) ordered after every other
    file: its purge then deleted the epochs 6 and 7 that the next attempt logged after it."""
    run = tmp_path / "run"
    for purge, epochs in ((1, range(1, 9)), (6, ()), (6, (6, 7))):
        writer = SummaryWriter(str(run), purge_step=purge)
        for e in epochs:
            writer.add_scalar("test/acc", float(e), e)
        writer.close()
        time.sleep(0.01)
    steps, _ = read_scalars(run)["test/acc"]
    assert list(steps) == [1, 2, 3, 4, 5, 6, 7]


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = "".join(
        line for line in capsys.readouterr().err.splitlines(True) if not line.startswith("etf-compare: warning: ")
    )
    assert err.count("\n") == 1 and err.startswith("etf-compare: error: ")
    return err


def test_error_missing_folder(tmp_path, capsys):
    """Catches a traceback instead of a one-line error for a folder that does not exist."""
    assert f"folder does not exist: {tmp_path / 'nope'}" in error_of([str(tmp_path / "nope")], capsys)


def test_error_no_runs(tmp_path, capsys):
    """Catches an empty report instead of an error when no run (or no finished run) is found."""
    assert main([str(tmp_path)]) == 2
    assert f"error: no runs under {tmp_path}" in capsys.readouterr().err
    write_config(tmp_path / "crashed", {"seed": 1}, state="unfinished")  # died before its first epoch
    assert main([str(tmp_path)]) == 2
    assert f"error: no finished runs under {tmp_path} (1 unfinished or failed)" in capsys.readouterr().err


def test_error_old_run_without_eval_acc_names_the_way_out(tmp_path, capsys):
    """Catches a run without train/eval_acc failing with a traceback or an error that does not name --acc-tag."""
    run = tmp_path / "run"
    write_config(run, {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "cifar10"}})
    write_events(run, {"train/acc": {1: 50.0}, "test/acc": {1: 40.0}})
    err = error_of([str(tmp_path)], capsys)
    assert f"run {run} has no scalar 'train/eval_acc'" in err and "--acc-tag train/acc" in err
    err = error_of([str(tmp_path), "--acc-tag", "train/acc"], capsys)
    assert f"run {run} has no scalar 'nc/nc1'" in err
    # with train/acc and without NC1 thresholds the same run is fine; the default first panel follows --acc-tag
    assert main([str(tmp_path), "--acc-tag", "train/acc", "--nc1-thresholds", "--metrics", "train/acc"]) == 0


def test_error_solver_time_missing_in_part_of_a_group(tmp_path):
    """Catches a group whose runs disagree on logging solver/ms summarised as if all had."""
    make_run(tmp_path / "a", "nearest_etf", 1)
    make_run(tmp_path / "b", "learned", 2)
    runs = load_runs([tmp_path])
    limits = thresholds("train/eval_acc", [90], [], [])
    assert summarize("x", [runs[1]], limits, "train/eval_acc").solver_ms.format(".3f") == "-"  # no solver: fine
    with pytest.raises(EtfTrainError, match=f"run {tmp_path / 'b'} has no scalar 'solver/ms'"):
        summarize("x", runs, limits, "train/eval_acc")


def test_run_folder_given_directly(sweep):
    """Catches a run folder passed directly not being found as a run."""
    assert [r.path for r in load_runs([sweep / "4"])] == [sweep / "4"]


def test_error_missing_plot_metric(sweep, tmp_path, capsys):
    """Catches a --metrics tag no run logs producing an empty panel instead of an error."""
    err = error_of([str(sweep), "--out", str(tmp_path), "--metrics", "nc/nc9"], capsys)
    assert "no run has scalar 'nc/nc9'" in err


def test_error_mixed_datasets(tmp_path, capsys):
    """Catches runs of different datasets compared without --allow-mixed."""
    make_run(tmp_path / "a", "learned", 1, dataset="cifar10")
    make_run(tmp_path / "b", "learned", 2, dataset="cifar100")
    err = error_of([str(tmp_path)], capsys)
    assert "cifar10 (1 run," in err and "cifar100 (1 run," in err and "--allow-mixed" in err
    assert main([str(tmp_path), "--allow-mixed", "--metrics", "test/acc"]) == 0


def test_error_fraction_threshold(sweep, capsys):
    """Catches accuracy thresholds given as fractions (0.9) silently never reached."""
    assert "--acc-thresholds must lie in (1, 100], got 0.9 (accuracies are in percent: 90?)" in error_of(
        [str(sweep), "--acc-thresholds", "0.9"], capsys
    )
    assert "--test-acc-thresholds must lie" in error_of([str(sweep), "--test-acc-thresholds", "0.95"], capsys)


def test_python_m_help():
    """Catches `python -m etf_train.compare` not starting or the help missing the options."""
    res = subprocess.run(
        [sys.executable, "-m", "etf_train.compare", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    for option in ("--group-by", "--acc-tag", "--test-acc-thresholds", "--nc1-thresholds", "--format", "--dpi"):
        assert option in res.stdout, option


def test_final_accuracy_is_the_last_epoch_not_the_best(tmp_path, capsys):
    """Catches "final" taken as the best (max) or any epoch other than the last logged one."""
    run = tmp_path / "run"
    write_config(run, {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "synthetic"}})
    train = {1: 50.0, 2: 80.0, 3: 97.5, 4: 62.5}  # peak at epoch 3, drop at epoch 4 (float32-exact values)
    test = {1: 40.0, 2: 60.0, 3: 75.5, 4: 55.25}
    write_events(
        run,
        {
            "train/acc": train,
            "test/acc": test,
            "train/loss": {e: 2.0 / e for e in train},
            "train/eval_acc": {e: v - 1.0 for e, v in train.items()},
            "nc/nc1": {e: 1.0 / e for e in train},
            "nc/nc3": {e: 0.5**e for e in train},
            "nc/equinorm_h": {e: 0.1 for e in train},
        },
    )
    out = tmp_path / "report"
    assert main([str(run), "--out", str(out), "--metrics", "test/acc"]) == 0
    capsys.readouterr()
    with (out / "comparison.csv").open() as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["head=learned"] and int(rows["head=learned"]["runs"]) == 1
    row = rows["head=learned"]
    assert float(row["epochs_median"]) == 4
    for stat in ("median", "min", "max"):
        assert float(row[f"final_train_eval_acc_{stat}"]) == train[4] - 1.0, stat
        assert float(row[f"final_test_acc_{stat}"]) == test[4], stat
    assert "61.50 [61.50, 61.50] | 55.25 [55.25, 55.25]" in (out / "comparison.md").read_text()


def test_only_finished_runs_count_and_broken_ones_are_listed(tmp_path, capsys, monkeypatch):
    """Catches a killed run (epoch 3 of 12) or a failed job (no scalars) entering or stopping the comparison. Also:
    the figure dropped a group whose runs all failed and drew 2 of 3 finished runs as n=2, and with
    --include-unfinished a failed run that logged nothing was listed as counted."""
    for seed in (1, 2):
        make_run(tmp_path / f"learned-{seed}", "learned", seed)
    killed = tmp_path / "learned-3"
    write_config(
        killed,
        {"seed": 3, "head": {"name": "learned"}, "dataset": {"name": "cifar10"}, "trainer": {"max_epochs": 12}},
        state="unfinished",
    )
    write_events(
        killed,
        {
            "train/acc": {e: 99.9 for e in (1, 2, 3)},
            "test/acc": {e: 99.9 for e in (1, 2, 3)},
            "train/eval_acc": {2: 99.9},
            "nc/nc1": {2: 0.001},
        },
    )
    failed = tmp_path / "nearest-1"
    write_config(failed, {"seed": 1, "head": {"name": "nearest_etf"}, "dataset": {"name": "cifar10"}}, state="failed")
    drawn = []
    monkeypatch.setattr(compare, "figure", lambda *a, **k: drawn.append(figure(*a, **k)) or drawn[-1])
    assert main([str(tmp_path), "--metrics", "train/acc", "--out", str(tmp_path / "a")]) == 0
    (legend,) = drawn[-1].legends
    assert [t.get_text() for t in legend.get_texts()] == ["learned (n=2 of 3)", "nearest_etf (n=0 of 1, not drawn)"]
    md = (tmp_path / "a" / "comparison.md").read_text()
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "a" / "comparison.csv").open())}
    learned, nearest = rows["head=learned"], rows["head=nearest_etf"]
    assert (learned["runs"], learned["runs_finished"], learned["runs_total"]) == ("2", "2", "3")
    assert float(learned["final_test_acc_max"]) < 99  # the killed run's 99.9 is not a final
    assert float(learned["epochs_min"]) == 12
    assert (nearest["runs_finished"], nearest["runs_total"], nearest["epochs_median"]) == ("0", "1", "")
    assert "| head=nearest_etf | 0/1 | - |" in md
    assert f"- {killed}: unfinished at epoch 3 of 12" in md
    assert f"- {failed}: failed at epoch 0 (diverged at epoch 1, step 2)" in md

    assert main([str(tmp_path), "--metrics", "train/acc", "--include-unfinished", "--out", str(tmp_path / "b")]) == 0
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "b" / "comparison.csv").open())}
    learned = rows["head=learned"]
    assert learned["runs"] == "3" and float(learned["final_test_acc_max"]) == pytest.approx(99.9)
    assert float(learned["epochs_min"]) == 3  # the killed run's last epoch, though eval_acc stops at 2
    md = (tmp_path / "b" / "comparison.md").read_text()
    assert "2/3 (+1 unfinished counted)" in md
    counted, left_out = md.split("Unfinished or failed runs, counted up to their last logged epoch:")[1].split(
        "Not counted (no epoch logged):"
    )
    assert str(killed) in counted and str(failed) not in counted and str(failed) in left_out
    (legend,) = drawn[-1].legends  # the figure says so too
    assert [t.get_text() for t in legend.get_texts()] == [
        "learned (n=3, 1 unfinished)",
        "nearest_etf (n=0 of 1, not drawn)",
    ]


def test_grouping_by_one_key_still_names_the_other_keys_of_its_section(tmp_path, capsys):
    """--group-by trainer.max_epochs left every trainer.* key out of the check between groups: 6 epochs of fp32 at
    batch 128 against 12 of bf16 at batch 1024 made a table labelled by epochs alone, in silence."""
    for epochs, precision, batch in ((6, "fp32", 128), (12, "bf16", 1024)):
        for seed in (1, 2):
            _set(
                make_run(tmp_path / f"e{epochs}s{seed}", "learned", seed),
                trainer__max_epochs=epochs,
                trainer__precision=precision,
                trainer__batch_size=batch,
            )
    assert main([str(tmp_path), "--group-by", "trainer.max_epochs", "--metrics", "train/acc"]) == 0
    err = capsys.readouterr().err
    assert "groups 'trainer.max_epochs=6' and 'trainer.max_epochs=12' differ in more than their labels" in err
    assert "trainer.batch_size: 128 -> 1024" in err and "trainer.precision: fp32 -> bf16" in err
    assert "trainer.max_epochs:" not in err  # the key grouped by is the label itself


def test_a_finished_marker_over_fewer_epochs_than_the_run_trains_is_not_counted(tmp_path):
    """A finished run that started over in its folder (its checkpoint gone) kept the old marker while the new
    attempt trained: killed at epoch 3 of 6, it counted as finished, its finals and thresholds those of epoch 3."""
    for seed in (1, 2):
        _set(make_run(tmp_path / f"r{seed}", "learned", seed), trainer__max_epochs=12)
    _set(tmp_path / "r2", trainer__max_epochs=20)  # marked finished, events end at epoch 12 of 20
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| head=learned | 1/2 |" in md
    assert f"{tmp_path / 'r2'}: marked finished, but its events end at epoch 12 of 20" in md


def test_a_run_continued_from_another_runs_checkpoint_is_named(tmp_path, capsys):
    """trainer.resume=<other run's last.pt> into a new folder logs epochs 3.. only: its first threshold epoch read
    as 3 where it may have been 1, in silence."""
    make_run(tmp_path / "full", "learned", 1)
    late = make_run(tmp_path / "late", "learned", 2)
    curves = read_scalars(late)
    for events in late.glob("events.out.tfevents.*"):
        events.unlink()
    write_events(late, {tag: {int(e): float(v) for e, v in zip(*curve) if e >= 3} for tag, curve in curves.items()})
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    err = capsys.readouterr().err
    assert f"{late} logged epochs 3-12 only (continued from another run's checkpoint?)" in err
    assert str(tmp_path / "full") + " logged" not in err


def test_nan_gives_the_same_cell_in_any_run_order_and_never_reads_as_never():
    """Python's min and max depend on where a NaN sits (nan [nan, nan] or nan [105, 105] for one data set), and an
    all-NaN column printed `never` in the table while the CSV said nan."""
    a, b = Spread((math.nan, 105.0, 100.0)), Spread((105.0, 100.0, math.nan))
    assert a.format("g") == b.format("g") == "degenerate"
    assert Spread((math.nan, math.nan)).format("g") == "degenerate"
    assert Spread((math.inf, math.inf)).format("g") == "never"
    assert Spread((3.0, math.inf)).format("g") == "never [3, never]"


def test_two_optimiser_classes_of_one_name_never_share_a_group():
    """torch.optim.AdamW and timm.optim.AdamW were both labelled optimizer=adamw: one group, one silent median."""
    runs = [
        fake_run(
            f"r{i}",
            {"seed": i, "head": {"name": "learned"}, "optimizer": {"_target_": target, "lr": 0.1}},
            {"train/acc": {1: 50.0}},
        )
        for i, target in enumerate(("torch.optim.AdamW", "timm.optim.AdamW", "torch.optim.SGD"))
    ]
    labels = sorted(group_runs(runs, ["head"]))
    assert labels == [
        "head=learned, optimizer=sgd",
        "head=learned, optimizer=timm.optim.AdamW",
        "head=learned, optimizer=torch.optim.AdamW",
    ]


def test_what_the_labels_do_not_show_is_named_in_the_files_too(tmp_path, capsys, monkeypatch):
    """A review found four silent misreadings: a head option both heads have (tau 20 against 5) hidden once the head
    names differed; the authors' preset labelled as the plain head it is built on; one learning rate split into two
    groups (5 from the command line, 5.0 from the yaml); and every warning on stderr only, none in comparison.md or
    the figure, which are what gets kept."""
    for seed in (1, 2):
        _set(
            make_run(tmp_path / f"learned{seed}", "learned", seed, tau=20.0),
            metrics__every_n_epochs=1,
            optimizer__lr=5.0,
        )
        _set(make_run(tmp_path / f"nearest{seed}", "nearest_etf", seed, tau=5.0), optimizer__lr=5.0)
    drawn = []
    monkeypatch.setattr(compare, "figure", lambda *a, **k: drawn.append(figure(*a, **k)) or drawn[-1])
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    expected = "groups 'head=learned' and 'head=nearest_etf' differ in more than their labels"
    assert expected in capsys.readouterr().err
    md = (tmp_path / "comparison.md").read_text()
    assert expected in md and "head.tau: 20.0 -> 5.0" in md.split("**Warnings**")[1]
    assert drawn[-1]._suptitle.get_text().endswith("1 warning: see comparison.md")

    for seed in (1, 2):  # the same tau: nothing to say, in either place
        _set(tmp_path / f"learned{seed}", head__tau=5.0, optimizer__lr=5.0 if seed == 1 else 5)
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "Warnings" not in (tmp_path / "comparison.md").read_text()
    assert "\n" not in drawn[-1]._suptitle.get_text()
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "comparison.csv").open())}
    assert rows["head=learned"]["runs"] == "2"  # lr 5 and 5.0: one setting, one group
    assert set(group_runs(load_runs([tmp_path]), ["optimizer.lr"])) == {"optimizer.lr=5"}

    for seed in (1, 2):  # what etf-train records of a preset: Hydra's choice of the head group
        _set(tmp_path / f"learned{seed}", head__bias=False, head__renorm=True)
        OmegaConf.save(
            {"hydra": {"runtime": {"choices": {"head": "learned_authors"}}}},
            tmp_path / f"learned{seed}" / ".hydra" / "hydra.yaml",
        )
    assert set(group_runs(load_runs([tmp_path]), ["head"])) == {"head=learned_authors", "head=nearest_etf"}
    _set(make_run(tmp_path / "plain", "learned", 1, bias=True, renorm=False, tau=5), optimizer__lr=5.0)
    assert set(group_runs(load_runs([tmp_path]), ["head"])) == {
        "head=learned, head.bias=True, head.renorm=False",
        "head=learned_authors, head.bias=False, head.renorm=True",
        "head=nearest_etf",
    }


def test_runs_of_several_code_versions_are_named(tmp_path, capsys):
    """Runs made before and after a fix (the replicate seeding of reliability row 63, nearest_etf's eval bias of
    row 85) pooled in silence: the record now holds the code version, and a comparison of several says so."""
    for seed in (1, 2):
        for head in ("learned", "nearest_etf"):
            _set(
                make_run(tmp_path / f"{head}{seed}", head, seed), metrics__every_n_epochs=1, code_version="0.1.0+gaaaa"
            )
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    assert "warning" not in capsys.readouterr().err
    _set(tmp_path / "nearest_etf2", code_version="0.1.0+gbbbb")
    assert main([str(tmp_path), "--metrics", "train/acc"]) == 0
    expected = "the runs come from 2 versions of etf-train (0.1.0+gaaaa: 3 runs, 0.1.0+gbbbb: 1 run)"
    assert expected in capsys.readouterr().err and expected in (tmp_path / "comparison.md").read_text()


def test_every_accuracy_tag_is_linear_and_labelled_as_one(tmp_path):
    """Only tags ending in `acc` were accuracies: test/acc_top5 (1 % to 90 %) got a log axis labelled `acc_top5`."""
    rising = {e: 1.0 * 90 ** ((e - 1) / 5) for e in range(1, 7)}
    run = fake_run(
        "r",
        {"head": {"name": "learned"}},
        {"test/acc_top5": rising, "test/acc_class/cat": rising, "train/loss": rising},
    )
    axes = figure({"head=learned": [run]}, ["test/acc_top5", "test/acc_class/cat", "train/loss"]).axes
    assert [ax.get_yscale() for ax in axes[:3]] == ["linear", "linear", "log"]
    assert [ax.get_ylabel() for ax in axes[:2]] == ["accuracy (%)", "accuracy (%)"]
