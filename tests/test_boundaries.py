"""Behaviours that a mutation run found pinned only from afar (issue 30): each test sits at the boundary where a
one-line change would alter the behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from etf_train import rundir
from etf_train.compare import epoch_stats
from etf_train.compare.runs import late_starts
from etf_train.metrics import nc_metrics
from etf_train.training import train

from .conftest import TINY, Crash, interrupted, make_cfg, run_interrupted_then_resumed
from .test_compare import fake_run, write_config

CONFIG = {"seed": 1, "head": {"name": "learned"}, "trainer": {"max_epochs": 4}}


def test_the_figures_band_with_a_nan_run_is_the_same_in_either_order():
    """np.min propagates a NaN whatever its place; min() over Python floats would not."""
    runs = [
        fake_run("a", CONFIG, {"nc/nc1": {1: 1.0, 2: math.nan}}),
        fake_run("b", CONFIG, {"nc/nc1": {1: 0.5, 2: 0.2}}),
    ]
    ab, ba = epoch_stats(runs, "nc/nc1"), epoch_stats(runs[::-1], "nc/nc1")
    for field in ("median", "min", "max"):
        np.testing.assert_array_equal(getattr(ab, field), getattr(ba, field))
    assert ab.min[0] == 0.5 and ab.max[0] == 1.0 and math.isnan(ab.min[1]) and math.isnan(ab.max[1])


def test_a_finished_run_one_epoch_short_is_not_counted():
    """Its finals would be the epoch before the last; at exactly max_epochs it counts."""
    short = fake_run("short", CONFIG, {"test/acc": {1: 50.0, 2: 60.0, 3: 70.0}})
    whole = fake_run("whole", CONFIG, {"test/acc": {1: 50.0, 2: 60.0, 3: 70.0, 4: 80.0}})
    assert short.short and not short.counted and whole.counted and not whole.short
    assert short.describe() == "short: marked finished, but its events end at epoch 3 of 4"


def test_a_run_whose_events_start_at_epoch_2_is_named():
    late = fake_run("late", CONFIG, {"test/acc": {2: 60.0, 3: 70.0, 4: 80.0}})
    on_time = fake_run("on_time", CONFIG, {"test/acc": {1: 50.0, 2: 60.0, 3: 70.0, 4: 80.0}})
    [message] = late_starts({"head=learned": [late, on_time]})
    assert message.startswith("late logged epochs 2-4 only")


def test_an_attempt_killed_before_its_first_epoch_still_purges_from_its_step(tmp_path):
    """The resumed attempt's writer opens with purge_step = its first epoch (3) and dies before logging: the
    crashed attempt's epoch 3 goes, as TensorBoard drops it; epoch 2 stays."""
    first = SummaryWriter(str(tmp_path))
    for epoch in (1, 2, 3):
        first.add_scalar("test/acc", 10.0 * epoch, epoch, walltime=1000.0 + epoch)
    first.close()
    SummaryWriter(str(tmp_path), purge_step=3).close()  # no scalars: killed at once
    assert len(rundir.event_files(tmp_path)) == 2
    steps, values = rundir.read_scalars(tmp_path)["test/acc"]
    assert list(steps) == [1, 2] and list(values) == [10.0, 20.0]


def test_finished_wins_over_failed_when_both_markers_exist(tmp_path):
    """A failure after the last epoch (a later no-op start that failed) does not undo a finished run."""
    write_config(tmp_path, CONFIG, state="failed")
    assert rundir.state(tmp_path) == rundir.RunState("failed", "diverged at epoch 1, step 2")
    (tmp_path / rundir.FINISHED).touch()
    assert rundir.state(tmp_path).status == "finished"


@pytest.fixture(scope="module")
def dropout_reference(tmp_path_factory):
    """A backbone that draws from the global torch RNG in training (timm's dropout before the features), 2 epochs."""
    run = tmp_path_factory.mktemp("dropout") / "reference"
    train(make_cfg(*DROPOUT), run)
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


DROPOUT = [
    *(o for o in TINY if not o.startswith("backbone.")),
    "backbone=timm",
    "backbone.model=resnet10t",
    "+backbone.kwargs.drop_rate=0.5",
    "dataset.channels=3",
    "dataset.image_size=16",
]


def test_a_resume_restores_the_global_rng_a_dropout_backbone_draws_from(tmp_path, monkeypatch, dropout_reference):
    """No resume test's model drew from the global stream, so restoring it was invisible: with dropout, a resume
    that did not restore it would train on other masks."""
    run_interrupted_then_resumed(monkeypatch, make_cfg(*DROPOUT), tmp_path / "run", after_epoch=1)
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in dropout_reference.items():
        assert torch.equal(resumed[key], value), key


def test_resume_from_the_folders_own_last_pt_continues_the_run(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(make_cfg(*TINY), reference)
    run = tmp_path / "run"
    with monkeypatch.context() as m:  # a crash just after epoch 1's checkpoint
        interrupted(m, after_epoch=1)
        with pytest.raises(Crash):
            train(make_cfg(*TINY), run)
    train(make_cfg(*TINY, f"trainer.resume={rundir.checkpoint(run)}"), run)
    a, b = (torch.load(rundir.checkpoint(r), weights_only=True) for r in (run, reference))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert list(rundir.read_scalars(run)["test/acc"][0]) == [1, 2]


def test_an_absent_class_is_no_nearest_class_centre_even_near_the_origin():
    """The absent class's mean would be the origin; samples nearer it than their own mean would count against
    NC4 if it were a candidate."""
    offsets = torch.tensor([-0.9, -0.5, 0.0, 0.5, 0.9], dtype=torch.float64)
    h = torch.cat(
        [
            torch.stack([1 + offsets, torch.zeros(5, dtype=torch.float64)], 1),
            torch.stack([-1 + offsets, torch.zeros(5, dtype=torch.float64)], 1),
        ]
    )  # class means (1, 0), (-1, 0)
    y = torch.tensor([0] * 5 + [1] * 5)
    W = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -5.0]], dtype=torch.float64)  # class 2 never wins the logits
    logits = h @ W.T
    assert torch.equal(logits.argmax(1), y)
    assert (h.norm(dim=1) < (h - torch.tensor([[1.0, 0.0]] * 5 + [[-1.0, 0.0]] * 5)).norm(dim=1)).sum() == 2
    assert nc_metrics(h, y, logits, W, 3)["nc4"] == 0.0
