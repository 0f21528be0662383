"""The run-folder contract in rundir.py, in-process (run 3's mutation triage left these alive): what a folder's
state and contents mean, the record written and read back, the settings a resume or a comparison may not change,
and how event files of several attempts merge. Every expected text and value is written out here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from etf_train import rundir
from etf_train.errors import EtfTrainError

# ----------------------------------------------------------------------------- a folder's state and contents


def test_a_folder_without_markers_is_unfinished_and_a_failed_one_says_why(tmp_path):
    """state(): no marker is `unfinished` (not failed with no reason, nor another word); the failure's reason."""
    assert rundir.state(tmp_path) == rundir.RunState("unfinished", "")
    rundir.mark_failed(tmp_path, "diverged")
    assert rundir.state(tmp_path) == rundir.RunState("failed", "diverged")


@pytest.mark.parametrize("part", ["record", "checkpoint", "events", "none"])
def test_any_one_part_of_a_run_makes_a_folder_hold_one(tmp_path, part):
    """holds_run: the record, the checkpoint or an event file each alone is a run; a log file alone is not."""
    files = {"record": ".hydra/config.yaml", "checkpoint": "checkpoints/last.pt", "events": "events.out.tfevents.1.h"}
    (tmp_path / "cli.log").write_text("")
    if part != "none":
        (tmp_path / files[part]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / files[part]).write_text("x")
    assert rundir.holds_run(tmp_path) is (part != "none")


# ----------------------------------------------------------------------------- the record


def test_the_record_is_written_into_a_folder_that_does_not_exist_yet_with_hydras_files(tmp_path):
    """write_record creates <run>/.hydra/ (parents included) and writes the three files, each as YAML; again into
    the same folder (a resume under other code rewrites the record)."""
    run = tmp_path / "outputs" / "run"
    rundir.write_record(run, {"seed": 1, "head": {"name": "learned"}}, ["seed=1"], {"run": {"dir": "outputs/run"}})
    rundir.write_record(run, {"seed": 2}, ["seed=2"], {"run": {"dir": "x"}})
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == {
        "config.yaml": "seed: 2\n",
        "overrides.yaml": "- seed=2\n",
        "hydra.yaml": "hydra:\n  run:\n    dir: x\n",
    }


def test_a_record_written_outside_the_cli_has_no_hydra_files(tmp_path):
    """Without overrides and Hydra's settings (train() called from Python) only config.yaml is written."""
    rundir.write_record(tmp_path, {"seed": 1})
    assert sorted(p.name for p in (tmp_path / ".hydra").iterdir()) == ["config.yaml"]


def _record(tmp_path, text: str) -> Path:
    path = tmp_path / ".hydra" / "config.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_a_record_that_does_not_parse_is_named_with_the_parsers_first_line(tmp_path):
    """The YAML error's first line (not its second, not the type name), in one line naming the file."""
    path = _record(tmp_path, "seed: 1\nhead: name: x\n")
    with pytest.raises(EtfTrainError) as e:
        rundir.read_record(tmp_path)
    assert str(e.value) == (
        f"cannot read the run record {path} (mapping values are not allowed here): it is damaged or not etf-train's"
    )


def test_a_read_error_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    """An error whose text is empty is named by its type (an unreadable file on a flaky mount)."""
    path = _record(tmp_path, "seed: 1\n")

    def fails(self, *args, **kwargs):
        raise OSError()

    monkeypatch.setattr(Path, "read_text", fails)
    with pytest.raises(EtfTrainError) as e:
        rundir.read_record(tmp_path)
    assert str(e.value) == f"cannot read the run record {path} (OSError): it is damaged or not etf-train's"


def test_a_record_whose_trainer_is_no_mapping_is_refused(tmp_path):
    """`trainer` is one of the sections read as mappings: a scalar there is not an etf-train config."""
    path = _record(tmp_path, "trainer: 5\n")
    with pytest.raises(EtfTrainError) as e:
        rundir.read_record(tmp_path)
    assert str(e.value) == f"the run record {path} is not an etf-train config (a mapping with its sections)"


def test_a_record_without_a_section_gains_the_section_with_the_options_added_since():
    """migrate: a record lacking a whole section (here all of them) reads as having the added options' values."""
    assert rundir.migrate({"seed": 3}) == {
        "seed": 3,
        "dataset": {"flip": True},
        "loader": {"stratified_folds": False},
        "trainer": {"cudnn_benchmark": None, "tf32": None},
        "metrics": {"erank_sw": True},
    }


# ----------------------------------------------------------------------------- settings that may not change


def test_neutral_keys_are_all_of_neutral_for_ordinary_configs():
    """Neither an image folder nor batch centring: every NEUTRAL key, sorted."""
    plain = {"dataset": {"name": "cifar10"}, "head": {"name": "learned", "center": "mean"}}
    assert rundir.neutral_keys(plain, {"dataset": None, "head": None}) == tuple(sorted(rundir.NEUTRAL))


@pytest.mark.parametrize("name", ["image_folder", "imagenet"])
def test_a_folder_dataset_makes_its_root_count(name):
    """For an image folder or ImageNet, dataset.root is what the data is: not neutral (for either config)."""
    dropped = set(rundir.NEUTRAL) - set(
        rundir.neutral_keys({"dataset": {"name": "cifar10"}}, {"dataset": {"name": name}})
    )
    assert dropped == {"dataset.root"}


def test_batch_centring_makes_the_eval_batch_size_count():
    """head.center=batch gives other eval logits for another eval batch size: not neutral (for either config)."""
    dropped = set(rundir.NEUTRAL) - set(rundir.neutral_keys({"head": {"center": "batch"}}, {"head": {}}))
    assert dropped == {"trainer.eval_batch_size"}


def test_changed_settings_lists_one_sided_and_none_values_as_unset():
    """A key on one side only is `(unset)` on the other, and a key set to None differs from an unset one."""
    assert rundir.changed_settings({"a": 1, "n": None, "loss": {"x": 1}}, {"a": 1, "b": 2, "m": None}) == [
        "b: (unset) -> 2",
        "loss.x: 1 -> (unset)",
        "m: (unset) -> None",
        "n: None -> (unset)",
    ]


@pytest.mark.parametrize("batch_side", ["saved", "now"])
def test_changed_settings_asks_both_configs_what_is_neutral(batch_side):
    """Batch centring on either side makes the eval batch size count (the head.center change is listed too)."""
    batch = {"head": {"center": "batch"}, "trainer": {"eval_batch_size": 100}}
    mean = {"head": {"center": "mean"}, "trainer": {"eval_batch_size": 200}}
    saved, now = (batch, mean) if batch_side == "saved" else (mean, batch)
    a, b = saved["head"]["center"], now["head"]["center"]
    assert rundir.changed_settings(saved, now) == [
        f"head.center: {a} -> {b}",
        f"trainer.eval_batch_size: {saved['trainer']['eval_batch_size']} -> {now['trainer']['eval_batch_size']}",
    ]


def test_a_key_the_record_gains_at_the_start_differs_only_when_both_have_it():
    """BUILT keys (trainer.processes): unset on either side is no change; two values that differ are."""
    one, two = {"trainer": {"processes": 1}}, {"trainer": {"processes": 2}}
    assert rundir.changed_settings(one, {"trainer": {}}) == []
    assert rundir.changed_settings({"trainer": {}}, two) == []
    assert rundir.changed_settings(one, two) == ["trainer.processes: 1 -> 2"]


def test_a_swapped_nested_choice_stands_for_its_own_options_only():
    """head.solver.name changed: the options of one solver only are covered by it; head.tau (both sides) and
    head.x (a head option of one side, not under the solver) are still listed."""
    saved = {"head": {"x": 1, "tau": 1, "solver": {"name": "a", "p": 1}}}
    now = {"head": {"tau": 2, "solver": {"name": "b", "q": 2}}}
    assert rundir.changed_settings(saved, now) == [
        "head.solver.name: a -> b",
        "head.tau: 1 -> 2",
        "head.x: 1 -> (unset)",
    ]


def test_a_swapped_group_covers_neither_the_options_both_have_nor_other_groups():
    """head.name changed: head.tau (both have it) is listed, and so is loss.y, one-sided in another group."""
    saved = {"head": {"name": "a", "tau": 1, "p": 1}, "loss": {"y": 1}}
    now = {"head": {"name": "b", "tau": 2}}
    assert rundir.changed_settings(saved, now) == ["head.name: a -> b", "head.tau: 1 -> 2", "loss.y: 1 -> (unset)"]


def test_an_option_change_without_a_swap_covers_nothing():
    """Only a changed name or _target_ swaps a group: a changed head.tau leaves head.x (one-sided) listed."""
    assert rundir.changed_settings({"head": {"tau": 1, "x": 1}}, {"head": {"tau": 2}}) == [
        "head.tau: 1 -> 2",
        "head.x: 1 -> (unset)",
    ]


# ----------------------------------------------------------------------------- event files of several attempts


def _scalar(wall: float, step: int, value: float, tag: str = "test/acc") -> Event:
    return Event(wall_time=wall, step=step, summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)]))


def _events(path: Path, *events: Event, opened: float | None = None) -> Path:
    """An event file of exactly these events, after a file_version event at wall time `opened` if given (as
    SummaryWriter opens a file)."""
    with open(path, "wb") as fh:
        writer = RecordWriter(fh)
        if opened is not None:
            writer.write(Event(wall_time=opened, file_version="brain.Event:2").SerializeToString())
        for ev in events:
            writer.write(ev.SerializeToString())
    return path


def _start(wall: float, purge: int) -> Event:
    return Event(wall_time=wall, step=purge, session_log=SessionLog(status=SessionLog.START))


def _curve(scalars: dict, tag: str = "test/acc") -> tuple[list, list]:
    steps, values = scalars[tag]
    assert steps.dtype == np.int64 and values.dtype == np.float64
    return steps.tolist(), values.tolist()


def test_an_attempt_without_scalars_is_ordered_by_its_first_event(tmp_path):
    """An attempt killed before it logged (events at 10 s and 30 s, purge step 2) started before the one that
    logged at 20 s: its purge comes first and removes nothing of the later attempt."""
    _events(tmp_path / "events.out.tfevents.1", _start(30.0, 2), opened=10.0)
    _events(tmp_path / "events.out.tfevents.2", _scalar(20.0, 1, 0.5), _scalar(21.0, 2, 0.25), _scalar(22.0, 3, 1.0))
    assert _curve(rundir.read_scalars(tmp_path)) == ([1, 2, 3], [0.5, 0.25, 1.0])


def test_an_empty_event_file_is_read_as_nothing(tmp_path):
    """A file with no event at all (a writer killed at once) sorts after the others and adds nothing."""
    (tmp_path / "events.out.tfevents.1").write_bytes(b"")
    _events(tmp_path / "events.out.tfevents.2", _scalar(20.0, 1, 0.5), opened=19.0)
    assert _curve(rundir.read_scalars(tmp_path)) == ([1], [0.5])


def test_only_the_files_asked_for_are_read(tmp_path):
    """files=...: the other event files of the folder are left out."""
    _events(tmp_path / "events.out.tfevents.1", _scalar(10.0, 2, 0.5), opened=9.0)
    b = _events(tmp_path / "events.out.tfevents.2", _scalar(20.0, 1, 0.75), opened=19.0)
    assert _curve(rundir.read_scalars(tmp_path, [b])) == ([1], [0.75])


def test_files_that_start_at_the_same_time_go_by_name(tmp_path):
    """A tie in start time is broken by the file name (the later file's values win), not by the purge steps."""
    _events(tmp_path / "events.out.tfevents.1", _start(100.0, 2), _scalar(100.0, 2, 0.5))
    _events(tmp_path / "events.out.tfevents.2", _scalar(100.0, 1, 0.125), _scalar(100.0, 2, 0.25))
    assert _curve(rundir.read_scalars(tmp_path)) == ([1, 2], [0.125, 0.25])


def test_the_purge_step_itself_is_discarded(tmp_path):
    """A resumed attempt with purge step 2 discards the earlier attempt's epoch 2 too, not only later ones."""
    _events(tmp_path / "events.out.tfevents.1", *(_scalar(10.0 + s, s, s / 8) for s in (1, 2, 3)), opened=10.0)
    _events(tmp_path / "events.out.tfevents.2", _start(20.0, 2), _scalar(21.0, 3, 1.0), opened=20.0)
    assert _curve(rundir.read_scalars(tmp_path)) == ([1, 3], [0.125, 1.0])


def test_only_a_start_is_a_purge_step(tmp_path):
    """A session log that is not START (a checkpoint note at step 1) discards nothing."""
    note = Event(wall_time=20.0, step=1, session_log=SessionLog(status=SessionLog.CHECKPOINT))
    _events(tmp_path / "events.out.tfevents.1", _scalar(10.0, 1, 0.125), _scalar(11.0, 2, 0.25), opened=10.0)
    _events(tmp_path / "events.out.tfevents.2", note, _scalar(21.0, 3, 1.0), opened=20.0)
    assert _curve(rundir.read_scalars(tmp_path)) == ([1, 2, 3], [0.125, 0.25, 1.0])


@pytest.mark.parametrize("opened", [None, 1.0])
def test_within_a_file_the_latest_event_of_a_step_wins_and_nothing_is_purged(tmp_path, opened):
    """Steps that go back inside one file (no file version: TensorBoard would purge the later steps), or a START
    after scalars: each (tag, step) keeps its latest value and every other step stays."""
    back = (_start(14.0, 2),) if opened else ()
    events = (_scalar(11.0, 1, 0.125), _scalar(12.0, 2, 0.25), _scalar(13.0, 3, 0.5), *back, _scalar(15.0, 2, 1.0))
    _events(tmp_path / "events.out.tfevents.1", *events, opened=opened)
    assert _curve(rundir.read_scalars(tmp_path)) == ([1, 2, 3], [0.125, 1.0, 0.5])


def test_every_scalar_is_read_however_many(tmp_path, monkeypatch):
    """No sampling: TensorBoard keeps a sample of 10000 scalars a tag by default (made 3 here, to stay fast)."""
    monkeypatch.setitem(event_accumulator.DEFAULT_SIZE_GUIDANCE, event_accumulator.SCALARS, 3)
    _events(tmp_path / "events.out.tfevents.1", *(_scalar(10.0 + s, s, s) for s in range(1, 9)), opened=10.0)
    assert _curve(rundir.read_scalars(tmp_path)) == (list(range(1, 9)), [float(s) for s in range(1, 9)])
