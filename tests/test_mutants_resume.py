"""Resuming at its boundaries (issue 30's mutation run left these untested): the refusal that lists changed settings,
what a checkpoint that is not etf-train's says, the random streams restored, and the folder Hydra leaves behind a
refused start; then (run 3's triage) which checkpoint a start continues from, what the run folder's start and end
write, and what restore() loads and refuses. Every expected message is written out here."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
import yaml

from etf_train import rundir
from etf_train.errors import EtfTrainError
from etf_train.training.checkpoint import load_checkpoint, rng_state, set_rng_state
from etf_train.training.resume import RunFolder, checkpoint_to_resume, refuse_changes, restore

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


# ----------------------------------------------------------------------------- which checkpoint a start continues from

RECORD = {"seed": 1, "trainer": {"max_epochs": 5}}


def _run(tmp_path, record: dict | None = RECORD, checkpoint: bool = True):
    """A run folder as a crashed run leaves it: its record and (when `checkpoint`) a checkpoint file."""
    run = tmp_path / "run"
    run.mkdir()
    if record is not None:
        rundir.write_record(run, record)
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    return run


def test_auto_continues_the_folders_own_checkpoint(tmp_path):
    """resume=auto with the record's settings: the folder's checkpoints/last.pt (None when it has none yet)."""
    run = _run(tmp_path)
    assert checkpoint_to_resume(run, "auto", RECORD) == run / "checkpoints" / "last.pt"
    (run / "checkpoints" / "last.pt").unlink()
    assert checkpoint_to_resume(run, "auto", RECORD) is None


def test_auto_with_other_settings_names_the_run_folder(tmp_path):
    """The refusal of resume=auto says which folder's run was started with other settings."""
    run = _run(tmp_path)
    with pytest.raises(EtfTrainError) as e:
        checkpoint_to_resume(run, "auto", {**RECORD, "seed": 2})
    assert str(e.value) == f"the run in {run} was started with other settings (seed: 1 -> 2); {TAIL}"


def test_auto_refuses_a_checkpoint_without_a_record(tmp_path):
    """A checkpoint with no .hydra/config.yaml is no run etf-train can continue."""
    run = _run(tmp_path, record=None)
    with pytest.raises(EtfTrainError) as e:
        checkpoint_to_resume(run, "auto", RECORD)
    assert str(e.value) == (
        f"{run} holds checkpoints or event files but no .hydra/config.yaml: not a run etf-train can continue; "
        "choose another folder"
    )


def test_never_starts_fresh_in_an_empty_folder_and_is_refused_where_a_run_is(tmp_path):
    """resume=never: None (a fresh start) in an empty folder; one line where the folder holds a run."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert checkpoint_to_resume(empty, "never", RECORD) is None
    run = _run(tmp_path)
    with pytest.raises(EtfTrainError) as e:
        checkpoint_to_resume(run, "never", RECORD)
    assert str(e.value) == (
        f"trainer.resume=never starts a new run, but {run} already holds one (one run per folder, or TensorBoard "
        "would mix their curves); choose another hydra.run.dir"
    )


def test_another_runs_checkpoint_starts_a_new_run_in_an_empty_folder(tmp_path):
    """resume=PATH of another folder's file: that path, into an empty folder; a path that is no file is refused."""
    other = _run(tmp_path) / "checkpoints" / "last.pt"
    new = tmp_path / "new"
    new.mkdir()
    assert checkpoint_to_resume(new, str(other), RECORD) == other
    missing = tmp_path / "nope.pt"
    with pytest.raises(EtfTrainError) as e:
        checkpoint_to_resume(new, str(missing), RECORD)
    assert str(e.value) == f"trainer.resume={missing}: no such checkpoint file"


def test_the_folders_own_checkpoint_by_a_relative_path_is_auto(tmp_path, monkeypatch):
    """resume=PATH naming the folder's own last.pt (however spelled) continues the run as auto does."""
    run = _run(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert checkpoint_to_resume(run, "run/checkpoints/last.pt", RECORD) == run / "checkpoints" / "last.pt"


# ----------------------------------------------------------------------------- the run folder's start and end


def _yaml(path) -> dict:
    return yaml.safe_load(path.read_text())


def test_a_fresh_start_writes_the_record_with_hydras_files_and_clears_old_markers(tmp_path):
    """start(): the record, the overrides and Hydra's settings; failed/finished markers of a previous try go."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "failed").write_text("diverged\n")
    (run / "checkpoints" / "finished").write_text("")
    RunFolder(run, main=True).start({"seed": 1, "code_version": "0.1.0"}, (["seed=1"], {"run": {"dir": "run"}}))
    assert _yaml(run / ".hydra" / "config.yaml") == {"seed": 1, "code_version": "0.1.0"}
    assert _yaml(run / ".hydra" / "overrides.yaml") == ["seed=1"]
    assert _yaml(run / ".hydra" / "hydra.yaml") == {"hydra": {"run": {"dir": "run"}}}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == []


@pytest.mark.parametrize("saved_version", ["0.1.0+gabc", "0.1.0+g123 then 0.1.0+gabc"])
def test_a_resume_under_the_same_code_leaves_the_record_as_it_was(tmp_path, saved_version):
    """Same code as the record's (last) version: the record is not rewritten, though the config differs in a
    neutral key."""
    run = _run(tmp_path, record={"seed": 1, "code_version": saved_version}, checkpoint=False)
    before = (run / ".hydra" / "config.yaml").read_bytes()
    RunFolder(run, main=True).start({"seed": 1, "code_version": "0.1.0+gabc", "trainer": {"progress": False}}, None)
    assert (run / ".hydra" / "config.yaml").read_bytes() == before


@pytest.mark.parametrize(
    ("record", "written"),
    [
        ({"seed": 1, "code_version": "0.1.0+gabc"}, "0.1.0+gabc then 0.1.0+gdef"),
        ({"seed": 1}, "not recorded then 0.1.0+gdef"),  # a record from before code_version
    ],
)
def test_a_resume_under_other_code_says_so_in_the_record(tmp_path, record, written):
    """Continued under other code: the record's code_version becomes `old then new`; the record is rewritten as read
    (in today's keys: the options added since take the values the run ran with)."""
    run = _run(tmp_path, record=record, checkpoint=False)
    RunFolder(run, main=True).start({"seed": 1, "code_version": "0.1.0+gdef"}, None)
    assert _yaml(run / ".hydra" / "config.yaml") == {
        "seed": 1,
        "code_version": written,
        "dataset": {"flip": True},
        "loader": {"stratified_folds": False},
        "trainer": {"cudnn_benchmark": None, "tf32": None},
        "metrics": {"erank_sw": True},
    }


def test_a_started_run_that_fails_is_marked_with_its_reason(tmp_path):
    """end(failure) after the start writes checkpoints/failed with the reason."""
    run = tmp_path / "run"
    folder = RunFolder(run, main=True)
    folder.start({"seed": 1}, None)
    folder.end("diverged at epoch 2, step 3")
    assert (run / "checkpoints" / "failed").read_text() == "diverged at epoch 2, step 3\n"


def test_a_folder_that_never_started_is_removed_by_rank_0_only(tmp_path):
    """end() before the start: rank 0 removes the folder Hydra made (an empty log only), other ranks leave it."""
    folders = {}
    for rank0 in (False, True):
        run = folders[rank0] = tmp_path / str(rank0)
        run.mkdir()
        (run / "cli.log").write_text("")
        RunFolder(run, main=rank0).end("refused")
    assert not folders[True].exists()
    assert sorted(p.name for p in folders[False].iterdir()) == ["cli.log"]


# ----------------------------------------------------------------------------- loading the checkpoint chosen

META = {"head": "learned", "num_classes": 2}


def _parts():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def _checkpoint(tmp_path, epoch: int = 3, partial: dict | None = None, config: dict = RECORD) -> tuple:
    """A checkpoint as Run.save writes it, after one optimiser step and one scheduler step; the RNG state of seeds
    11, 12, 13 (python, numpy, torch)."""
    torch.manual_seed(0)
    model, optimizer, scheduler = _parts()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    state = {
        "epoch": epoch,
        "partial": partial,
        "meta": META,
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "scheduler": scheduler.state_dict(),
    }
    path = tmp_path / "last.pt"
    torch.save(state, path)
    return path, state


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_a_resume_at_an_epochs_end_loads_everything_and_the_random_streams(tmp_path, caplog):
    """restore(): weights, momentum, the schedule's position, the RNG streams; (epoch, None, rng) and one log line."""
    path, state = _checkpoint(tmp_path)
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    expected = _draws()
    torch.manual_seed(1)
    model, optimizer, scheduler = _parts()
    with caplog.at_level(logging.INFO, logger="etf_train"):
        epoch, partial, rng = restore(path, META, RECORD, False, model, optimizer, scheduler)
    assert _draws() == expected
    assert (epoch, partial, rng["python"]) == (3, None, state["rng"]["python"])
    assert torch.equal(model.weight, state["model"]["weight"]) and torch.equal(model.bias, state["model"]["bias"])
    momentum = optimizer.state[model.weight]["momentum_buffer"]
    assert torch.equal(momentum, torch.ones(2, 3))  # d(sum of outputs)/dW for an input of ones, after one step
    assert (scheduler.last_epoch, scheduler.get_last_lr()) == (1, [0.05])
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("etf_train", f"resumed from {path} at the end of epoch 3")
    ]


def test_a_resume_inside_an_epoch_leaves_the_random_streams_to_the_loop(tmp_path, caplog):
    """A partial-epoch checkpoint: its position is returned and logged; the RNG is not set here (the loop sets it
    after skipping the batches already done)."""
    path, state = _checkpoint(tmp_path, partial={"epoch": 4, "step": 7})
    parts = _parts()  # built first: a Linear's initialisation draws from torch's generator
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    expected = _draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    with caplog.at_level(logging.INFO, logger="etf_train"):
        epoch, partial, rng = restore(path, META, RECORD, False, *parts)
    assert _draws() == expected
    assert (epoch, partial, rng["python"]) == (3, {"epoch": 4, "step": 7}, state["rng"]["python"])
    assert [r.getMessage() for r in caplog.records] == [f"resumed from {path} at epoch 4, step 7"]


def test_a_model_without_a_schedule_loads_without_one(tmp_path):
    """scheduler None (a constant learning rate): nothing to load for it."""
    path, _ = _checkpoint(tmp_path)
    model, optimizer, _ = _parts()
    assert restore(path, META, RECORD, False, model, optimizer, None)[0] == 3


def test_a_checkpoint_of_other_settings_is_refused_by_its_path(tmp_path):
    """The checkpoint's own config is compared with this run's, and the refusal names the file."""
    path, _ = _checkpoint(tmp_path)
    with pytest.raises(EtfTrainError) as e:
        restore(path, META, {**RECORD, "seed": 2}, False, *_parts())
    assert str(e.value) == f"checkpoint {path} was started with other settings (seed: 1 -> 2); {TAIL}"


def test_a_given_damaged_checkpoint_gets_the_advice_for_a_given_file(tmp_path):
    """given=True reaches load_checkpoint: the advice is to point trainer.resume elsewhere."""
    path = tmp_path / "c.pt"
    path.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(EtfTrainError) as e:
        restore(path, META, RECORD, True, *_parts())
    assert str(e.value) == (
        f"cannot read checkpoint {path} (UnpicklingError); point trainer.resume at a run's checkpoints/last.pt"
    )


class _Refuses:
    """A model or optimiser whose load_state_dict raises `error` (as torch's do for another shape)."""

    def __init__(self, error: Exception):
        self.error = error

    def load_state_dict(self, state):
        raise self.error


@pytest.mark.parametrize(
    ("model_error", "optimizer_error", "shown"),
    [
        (ValueError("Error(s) in loading:\n\tfirst\n\t size mismatch for bias \n"), None, "size mismatch for bias"),
        (None, ValueError(), "ValueError"),
        (None, KeyError("param_groups"), "'param_groups'"),
    ],
)
def test_a_checkpoint_that_does_not_fit_names_the_last_line_of_the_error(tmp_path, model_error, optimizer_error, shown):
    """The error's last line, stripped (or its type when it has no text), in one line naming the file."""
    path, _ = _checkpoint(tmp_path)
    model, optimizer, scheduler = _parts()
    model = _Refuses(model_error) if model_error else model
    optimizer = _Refuses(optimizer_error) if optimizer_error else optimizer
    with pytest.raises(EtfTrainError) as e:
        restore(path, META, RECORD, False, model, optimizer, scheduler)
    assert str(e.value) == (
        f"checkpoint {path} does not fit this model ({shown}); use another output folder or trainer.resume=never"
    )


@pytest.mark.parametrize(("epoch", "given", "refused"), [(5, True, True), (4, True, False), (5, False, False)])
def test_a_given_checkpoint_of_a_finished_run_leaves_nothing_to_train(tmp_path, epoch, given, refused):
    """Another folder's checkpoint at max_epochs (5) is refused; one epoch short, or the folder's own, is not."""
    path, _ = _checkpoint(tmp_path, epoch=epoch)
    if not refused:
        assert restore(path, META, RECORD, given, *_parts())[0] == epoch
        return
    with pytest.raises(EtfTrainError) as e:
        restore(path, META, RECORD, given, *_parts())
    assert str(e.value) == (
        f"checkpoint {path} is of a run that finished all its 5 epochs: nothing to train; `etf-eval` evaluates it, "
        "and training longer is a new run"
    )


def test_a_resume_under_a_version_that_is_a_suffix_of_the_records_is_noted(tmp_path):
    """10.1.0 then 0.1.0 was kept as 10.1.0 (the check was `endswith`): the last version continued under counts."""
    rundir.write_record(tmp_path, {"seed": 1, "code_version": "10.1.0"})
    RunFolder(tmp_path, main=True).start({"seed": 1, "code_version": "0.1.0"}, None)
    assert _yaml(tmp_path / ".hydra" / "config.yaml")["code_version"] == "10.1.0 then 0.1.0"
    RunFolder(tmp_path, main=True).start({"seed": 1, "code_version": "0.1.0"}, None)  # the same again: unchanged
    assert _yaml(tmp_path / ".hydra" / "config.yaml")["code_version"] == "10.1.0 then 0.1.0"


def test_a_record_continued_twice_compares_with_its_last_version(tmp_path):
    """`a then b then c` resumed under c is unchanged; under d it gains ` then d` (the last part, not after the
    first ` then `)."""
    for now, want in (("c", "a then b then c"), ("d", "a then b then c then d")):
        folder = tmp_path / now
        rundir.write_record(folder, {"seed": 1, "code_version": "a then b then c"})
        RunFolder(folder, main=True).start({"seed": 1, "code_version": now}, None)
        assert _yaml(folder / ".hydra" / "config.yaml")["code_version"] == want
