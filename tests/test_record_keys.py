"""Runs recorded before every config group named its choice by `name` (backbone.arch, a timm model in backbone.name,
head.solver.method) still resume, evaluate and compare as runs of today's keys."""

from __future__ import annotations

import pytest
import yaml

from etf_train import rundir
from etf_train.compare.runs import load_run
from etf_train.training import train

from .conftest import TINY, Crash, interrupted, make_cfg


def _in_older_keys(record: dict) -> dict:
    """The record as an etf-train before the renaming wrote it (written out here, not by rundir.migrate)."""
    backbone = dict(record["backbone"])
    older = {"arch": backbone.pop("name"), **({"name": backbone.pop("model")} if "model" in backbone else {})}
    solver = dict(record["head"]["solver"])
    return {
        **record,
        "backbone": {**older, **backbone},
        "head": {**record["head"], "solver": {"method": solver.pop("name"), **solver}},
    }


def test_a_timm_record_moves_its_model_out_of_name():
    older = {"backbone": {"arch": "timm", "name": "resnet10t", "pretrained": False}, "head": {"name": "learned"}}
    assert rundir.migrate(older) == {
        "backbone": {"name": "timm", "model": "resnet10t", "pretrained": False},
        "head": {"name": "learned"},
    }
    today = {"backbone": {"name": "timm", "model": "resnet10t"}, "head": {"solver": {"name": "gram"}}}
    assert rundir.migrate(today) == today  # a record in today's keys is left as it is


def test_a_run_recorded_in_the_older_keys_resumes_and_compares(tmp_path, monkeypatch):
    run, cfg = tmp_path / "run", make_cfg(*TINY, "head=nearest_etf", "solver=gram")
    with monkeypatch.context() as m:
        interrupted(m, after_epoch=1)
        with pytest.raises(Crash):
            train(cfg, run)
    path = run / rundir.CONFIG
    today = yaml.safe_load(path.read_text())
    assert today["backbone"]["name"] == "small_cnn" and today["head"]["solver"]["name"] == "gram"
    path.write_text(yaml.safe_dump(_in_older_keys(today), sort_keys=False))

    assert rundir.read_record(run) == today
    loaded = load_run(run)
    assert loaded.config.backbone.name == "small_cnn" and len(loaded.events) == 1  # its own events, not "foreign"

    # a key read as changed would stop the resume with "started with other settings"
    train(cfg, run)
    assert rundir.read_scalars(run)["test/acc"][0].tolist() == [1, 2]


def test_a_swapped_group_covers_the_identity_of_a_group_inside_it():
    """learned -> nearest_etf brings head.solver.name with it, as it brings head.delta: only head.name is listed; a
    solver swapped under the same head is listed, and so is an option both heads have."""
    learned = {"head": {"name": "learned", "tau": 5.0}}
    nearest = {"head": {"name": "nearest_etf", "tau": 5.0, "delta": 1e-3, "solver": {"name": "svd"}}}
    assert rundir.changed_settings(learned, nearest) == ["head.name: learned -> nearest_etf"]
    gram = {"head": {**nearest["head"], "tau": 4.0, "solver": {"name": "gram"}}}
    assert rundir.changed_settings(nearest, gram) == ["head.solver.name: svd -> gram", "head.tau: 5.0 -> 4.0"]
