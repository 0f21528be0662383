"""The authors' batching (issue 26): floor(N / B) stratified folds an epoch, each one batch, for their nearest-ETF
scripts; shuffled batches of B for their other heads. Checked against counts worked out here."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from etf_train import EtfTrainError
from etf_train.data.samplers import StratifiedFoldsSampler
from etf_train.rundir import read_record
from etf_train.training import train

from .conftest import make_cfg

UFM10 = torch.arange(10).repeat_interleave(100)  # UFM-10's labels: 100 samples of each of 10 classes


def batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_folds_partition_the_train_set_into_stratified_batches_of_n_over_floor_n_over_b():
    sampler = StratifiedFoldsSampler(UFM10, 256, seed=1)
    found = batches(sampler, 1)
    assert len(sampler) == len(found) == 1000 // 256 == 3
    assert sorted(len(b) for b in found) == [333, 333, 334]
    assert sorted(i for b in found for i in b) == list(range(1000))  # every sample once
    for batch in found:  # 100 of each class over 3 folds: 33 or 34 in each
        assert set(Counter(UFM10[batch].tolist()).values()) <= {33, 34}
    assert batches(sampler, 2) != found  # new folds each epoch
    assert batches(StratifiedFoldsSampler(UFM10, 256, seed=1), 1) == found  # seeded
    assert batches(StratifiedFoldsSampler(UFM10, 256, seed=2), 1) != found


def test_ranks_share_each_fold():
    whole = batches(StratifiedFoldsSampler(UFM10, 256, seed=3), 1)
    shards = [batches(StratifiedFoldsSampler(UFM10, 256, seed=3, rank=r, world_size=2), 1) for r in range(2)]
    for step, batch in enumerate(whole):
        assert sorted(shards[0][step] + shards[1][step]) == sorted(batch)
        assert abs(len(shards[0][step]) - len(shards[1][step])) <= 1


def test_a_train_set_smaller_than_a_batch_is_one_batch_and_too_few_of_a_class_is_one_line():
    [only] = batches(StratifiedFoldsSampler(torch.arange(4).repeat(5), 64, seed=0), 1)
    assert sorted(only) == list(range(20))
    labels = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    with pytest.raises(EtfTrainError, match="3 folds need at least 3 samples of every class, and one class has 2"):
        StratifiedFoldsSampler(labels, 30)


@pytest.mark.parametrize(
    ("head", "steps", "folds"),
    [("nearest_etf", 3, True), ("learned_authors", 4, False), ("fixed_etf_authors", 4, False)],
)
def test_the_authors_preset_batches_each_head_as_their_scripts_do(tmp_path, caplog, head, steps, folds):
    """Their nearest-ETF scripts pass --stratified_batch (3 batches an epoch on UFM-10), the others do not (4)."""
    cfg = make_cfg(
        "experiment=ufm10_authors",
        f"head={head}",
        "trainer.max_epochs=1",
        "trainer.device=cpu",
        "trainer.progress=false",
    )
    with caplog.at_level("INFO", logger="etf_train"):
        train(cfg, tmp_path / "run")
    record = read_record(tmp_path / "run")
    assert record["loader"]["stratified_folds"] is folds and record["loader"]["class_balanced"] is False
    assert record["sizes"]["steps_per_epoch"] == steps
    assert f"{steps} steps an epoch" in caplog.text


def test_two_ways_to_form_batches_are_refused(tmp_path):
    with pytest.raises(EtfTrainError, match="loader.class_balanced and loader.stratified_folds .* choose one"):
        train(
            make_cfg(
                "dataset=ufm",
                "backbone=ufm",
                "loader.class_balanced=true",
                "loader.stratified_folds=true",
                "trainer.device=cpu",
            ),
            tmp_path / "run",
        )


@pytest.fixture(scope="module")
def authors_sweep(tmp_path_factory):
    """UFM-10 under the authors' preset, 2 epochs: nearest_etf on folds (3 steps an epoch), learned_authors on
    shuffled batches (4)."""
    root = tmp_path_factory.mktemp("authors")
    for head in ("nearest_etf", "learned_authors"):
        train(
            make_cfg(
                "experiment=ufm10_authors",
                f"head={head}",
                "trainer.max_epochs=2",
                "trainer.device=cpu",
                "trainer.progress=false",
            ),
            root / head,
        )
    return root


def test_etf_compare_names_the_step_counts_and_draws_over_steps(authors_sweep, tmp_path, capsys):
    from etf_train.compare import main as etf_compare
    from etf_train.compare.runs import group_runs, load_runs
    from etf_train.compare.steps import over_steps

    assert etf_compare([str(authors_sweep), "--out", str(tmp_path / "a"), "--x", "steps", "--metrics", "nc/nc1"]) == 0
    err, report = capsys.readouterr().err, (tmp_path / "a" / "comparison.md").read_text()
    [warning] = [line for line in err.splitlines() if "optimiser steps an epoch" in line]
    assert re.search(r"steps an epoch \(learned[^;]*: 4; nearest_etf[^;]*: 3\)", warning), warning
    assert "steps an epoch" in report and ("3 / 4 steps an epoch" in report or "4 / 3 steps an epoch" in report)
    groups = group_runs(load_runs([authors_sweep]), ["head"])
    stepped = over_steps(groups)
    for label, per_epoch in ((label, 3 if "nearest" in label else 4) for label in groups):
        epochs, values = groups[label][0].scalars["nc/nc1"]
        steps, same = stepped[label][0].scalars["nc/nc1"]
        assert list(steps) == [per_epoch * e for e in epochs] and list(same) == list(values)


def test_runs_without_a_step_count_cannot_be_drawn_over_steps(authors_sweep, tmp_path, capsys):
    import shutil

    import yaml

    from etf_train.compare import main as etf_compare

    old = shutil.copytree(authors_sweep, tmp_path / "old")
    for record in old.glob("*/.hydra/config.yaml"):
        config = yaml.safe_load(record.read_text())
        del config["sizes"]["steps_per_epoch"]
        record.write_text(yaml.safe_dump(config))
    assert etf_compare([str(old), "--out", str(tmp_path / "b"), "--x", "steps"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("etf-compare: error: --x steps:") and "record no steps an epoch" in line
    assert etf_compare([str(old), "--out", str(tmp_path / "c")]) == 0  # over epochs they compare as before
    assert "steps an epoch (" not in capsys.readouterr().err
