"""Runs recorded before every config group named its choice by `name` (backbone.arch, a timm model in backbone.name,
head.solver.method) still resume, evaluate and compare as runs of today's keys."""

from __future__ import annotations

import pytest
import yaml

from etf_train import rundir
from etf_train.compare.runs import load_run
from etf_train.errors import EtfTrainError
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
    migrated = rundir.migrate(older)
    assert (migrated["backbone"], migrated["head"]) == (
        {"name": "timm", "model": "resnet10t", "pretrained": False},
        {"name": "learned"},
    )
    today = {"backbone": {"name": "timm", "model": "resnet10t"}, "head": {"solver": {"name": "gram"}}}
    migrated = rundir.migrate(today)
    assert (migrated["backbone"], migrated["head"]) == (today["backbone"], today["head"])  # today's keys: as they are


def test_a_record_without_a_later_option_reads_with_the_value_it_ran_with():
    """Catches an added option read as unset (posthoc would fail on it) or as today's default, and a migration that
    edits the caller's dict."""
    older = {"metrics": {"every_n_epochs": 2}, "trainer": {"max_epochs": 3}}
    migrated = rundir.migrate(older)
    assert migrated["metrics"] == {"every_n_epochs": 2, "erank_sw": True}  # every NC pass formed S_W then
    assert migrated["trainer"] == {"max_epochs": 3, "cudnn_benchmark": None, "tf32": None}
    assert older == {"metrics": {"every_n_epochs": 2}, "trainer": {"max_epochs": 3}}
    assert rundir.migrate({"metrics": {"erank_sw": False}})["metrics"]["erank_sw"] is False


@pytest.mark.parametrize("section", ["trainer", "metrics", "dataset", "loader"])
def test_a_record_whose_section_is_no_mapping_is_one_line(tmp_path, section):
    """Catches a damaged record (`metrics: null`) read on, to a TypeError in etf-eval's config["metrics"][...]."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / rundir.CONFIG).write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, section: None}))
    with pytest.raises(EtfTrainError, match="is not an etf-train config"):
        rundir.read_record(tmp_path)


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
