"""Resuming at its boundaries (issue 30's mutation run left these untested): the refusal that lists changed settings,
what a checkpoint that is not etf-train's says, the random streams restored, and the folder Hydra leaves behind a
refused start. Every expected message is written out here."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from etf_train import rundir
from etf_train.errors import EtfTrainError
from etf_train.training.checkpoint import load_checkpoint, rng_state, set_rng_state
from etf_train.training.resume import refuse_changes

TAIL = "rerun with its settings to continue it, or start fresh in another folder (a new hydra.run.dir)"


@pytest.mark.parametrize("count", [6, 7])
def test_a_refused_resume_lists_six_changes_and_counts_the_rest(count):
    saved = {"head": {f"o{i}": 0 for i in range(count)}}
    now = {"head": {f"o{i}": 1 for i in range(count)}}
    shown = ", ".join(f"head.o{i}: 0 -> 1" for i in range(6)) + (" and 1 more" if count == 7 else "")
    with pytest.raises(EtfTrainError) as e:
        refuse_changes(saved, now, "the run in r")
    assert str(e.value) == f"the run in r was started with other settings ({shown}); {TAIL}"


def test_a_longer_run_is_told_it_is_a_new_run():
    with pytest.raises(EtfTrainError) as e:
        refuse_changes({"trainer": {"max_epochs": 5}}, {"trainer": {"max_epochs": 9}}, "the run in r")
    assert str(e.value) == (
        f"the run in r was started with other settings (trainer.max_epochs: 5 -> 9); {TAIL}"
        "; training longer than a run's trainer.max_epochs is a new run"
    )


class Foreign:  # a class a received checkpoint could name, so that loading it would run code
    pass


def _refused(path, **kwargs) -> str:
    with pytest.raises(EtfTrainError) as e:
        load_checkpoint(path, {"head": "learned", "num_classes": 3}, **kwargs)
    return str(e.value)


def test_what_a_checkpoint_that_is_not_etf_trains_says(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"meta": {}, "obj": Foreign()}, path)
    assert _refused(path) == (
        f"checkpoint {path} holds a pickled {__name__}.Foreign, not only tensors and plain values: etf-train does "
        "not run code from a checkpoint; use checkpoints that etf-train wrote"
    )
    torch.save({"model": {}}, path)
    assert (
        _refused(path) == f"{path} is not an etf-train checkpoint; point trainer.resume at a run's checkpoints/last.pt"
    )
    torch.save({"meta": {"head": "learned", "num_classes": 3}}, path)
    assert _refused(path) == (
        f"checkpoint {path} holds no record of the settings it was trained with (an older etf-train wrote it, or it "
        "was stripped): they cannot be checked against this run's"
    )
    torch.save({"meta": {"head": "fixed_etf", "num_classes": 4}, "config": {}}, path)
    assert _refused(path) == (
        f"checkpoint {path} does not match this run (head: checkpoint 'fixed_etf' vs this run 'learned', "
        "num_classes: checkpoint 4 vs this run 3); use another output folder or trainer.resume=never"
    )


def test_a_file_that_is_no_checkpoint_at_all_gets_the_advice_of_whose_file_it_is(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"\x80\x02not a pickle at all")
    own = "this run's own checkpoint is damaged: start the run again in a new folder"
    assert _refused(path) == f"cannot read checkpoint {path} (UnpicklingError); {own}"  # given defaults to False
    given = "point trainer.resume at a run's checkpoints/last.pt"
    assert _refused(path, given=True) == f"cannot read checkpoint {path} (UnpicklingError); {given}"
    torch.save({"meta": {}, "w": torch.zeros(1000)}, path)  # a torch file cut short: torch.load's own error
    path.write_bytes(path.read_bytes()[:1000])
    assert _refused(path) == f"cannot read checkpoint {path} (RuntimeError); {own}"
    assert _refused(path, given=True) == f"cannot read checkpoint {path} (RuntimeError); {given}"


def test_every_random_stream_is_restored():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(7), np.random.seed(8), torch.manual_seed(9)
    set_rng_state(state)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first


def test_a_folder_holding_only_hydras_empty_log_is_removed_and_nothing_else_is(tmp_path):
    def folder(name, files):
        path = tmp_path / name
        path.mkdir()
        for file, text in files.items():
            (path / file).write_text(text)
        return path

    empty_log = folder("a", {rundir.LOG.name: ""})
    written_log = folder("b", {rundir.LOG.name: "started"})
    other_empty = folder("c", {"other.txt": ""})
    log_and_other = folder("d", {rundir.LOG.name: "", "x.yaml": ""})
    for path in (empty_log, written_log, other_empty, log_and_other):
        rundir.remove_if_empty(path)
    assert not empty_log.exists()
    assert written_log.exists() and other_empty.exists() and log_and_other.exists()
