"""Which event files are a run's own (issue 30's mutation run): the config an event file logged at step 0, read
back, and compared with the run's record. Event files are written here with the real SummaryWriter, as the
trainer's Logbook writes them."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from etf_train.compare.events import foreign, logged_config, own_events

RECORD = {"seed": 1, "head": {"name": "learned"}, "dataset": {"name": "cifar10"}}


def events(folder: Path, text: str | None, *, scalars_first: bool = False, step: int = 0) -> Path:
    """An event file holding (optionally) a scalar of epoch 1 before anything else, then the config text."""
    writer = SummaryWriter(log_dir=str(folder))
    if scalars_first:
        writer.add_scalar("train/loss", 1.0, 1)
    writer.add_scalar("setup/x", 0.0, 0)  # a summary without the config at step 0: reading goes on past it
    if text is not None:
        writer.add_text("config", text, step)
    writer.add_scalar("train/loss", 0.5, 2)
    writer.close()
    (path,) = folder.glob("events.out.tfevents.*")
    return path


def logged(config: dict) -> str:
    return f"```yaml\n{OmegaConf.to_yaml(OmegaConf.create(config))}```"


def test_the_config_logged_at_step_0_is_read_back_whole(tmp_path):
    text = logged(RECORD) + " \u00e9"  # non-ASCII survives
    assert logged_config(events(tmp_path / "a", text)) == text


def test_no_config_before_the_first_epoch_means_none(tmp_path):
    assert logged_config(events(tmp_path / "a", None)) is None
    assert logged_config(events(tmp_path / "b", logged(RECORD), step=1)) is None  # logged with epoch 1: too late
    assert logged_config(events(tmp_path / "c", logged(RECORD), scalars_first=True)) is None


def test_an_event_file_is_another_runs_when_its_config_changes_a_setting(tmp_path):
    mine = events(tmp_path / "mine", logged(RECORD))
    theirs = events(tmp_path / "theirs", logged({**RECORD, "seed": 2}))
    silent = events(tmp_path / "silent", None)
    assert foreign(mine, RECORD) is None
    assert foreign(silent, RECORD) is None  # nothing logged: nothing says it is another run's
    assert foreign(theirs, RECORD) == "logged -> recorded: seed: 2 -> 1"
    assert (
        foreign(events(tmp_path / "list", "```yaml\n- 1\n- 2\n```"), RECORD) == "its logged config does not read as one"
    )
    assert foreign(events(tmp_path / "bad", "```yaml\n{a: [\n```"), RECORD) == "its logged config does not read as one"


def test_a_runs_own_and_other_event_files_are_told_apart(tmp_path):
    run = tmp_path / "run"
    mine = events(run, logged(RECORD))
    theirs = events(tmp_path / "theirs", logged({**RECORD, "seed": 2}))
    moved = theirs.rename(run / theirs.name)  # an event file copied in from another run's folder
    own, others = own_events(run, RECORD)
    assert own == [mine] and others == {moved: "logged -> recorded: seed: 2 -> 1"}


def test_a_config_of_bytes_that_are_not_utf8_is_read_with_replacement_characters(tmp_path):
    """An event file written by another tool: its config bytes are read, not a UnicodeDecodeError."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto

    writer = SummaryWriter(log_dir=str(tmp_path))
    tensor = TensorProto(dtype=7, string_val=[b"seed: \xff1"])  # DT_STRING
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="config/text_summary", tensor=tensor)]), 0)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert logged_config(path) == "seed: \ufffd1"
