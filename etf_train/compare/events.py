"""Which event files in a run folder are the run's own. Every start, fresh or resumed, logs its config as text before
its first epoch (training/logbook.py); a file whose config names other settings than the folder's record
(`.hydra/config.yaml`) is another run's, copied in or left by a reused folder, and would stand for this run's numbers.
A file without a config (an older etf-train's) cannot be told apart and is kept."""

from __future__ import annotations

from pathlib import Path

import yaml

from .. import rundir

CONFIG_TAG = "config/text_summary"  # SummaryWriter.add_text("config", ...), as Logbook writes it at step 0
SHOWN = 4  # differing settings a message names


def listed(diff: list[str]) -> str:
    """The first few differing settings, `a: 1 -> 2, b: x -> y ...`."""
    return ", ".join(diff[:SHOWN]) + (" ..." if len(diff) > SHOWN else "")


def logged_config(events: Path) -> str | None:
    """The config text an event file logged before its first epoch (step 0), or None."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for ev in EventFileLoader(str(events)).Load():
        if not ev.HasField("summary"):
            continue
        if ev.step > 0:  # epochs are steps 1, 2, ...: no config before them
            return None
        for value in ev.summary.value:
            if value.tag == CONFIG_TAG:
                return b"".join(value.tensor.string_val).decode(errors="replace")
    return None


def foreign(events: Path, record: dict) -> str | None:
    """Why an event file is not the run of `record` (`logged -> recorded: seed: 2 -> 1`), or None."""
    text = logged_config(events)
    if text is None:
        return None
    try:
        logged = yaml.safe_load(text.strip().removeprefix("```yaml").removesuffix("```"))
    except yaml.YAMLError:
        logged = None
    if not isinstance(logged, dict):
        return "its logged config does not read as one"
    # the settings that can change results: a resume may change the others (code_version: `X then Y`)
    diff = rundir.changed_settings(logged, record)
    return f"logged -> recorded: {listed(diff)}" if diff else None


def own_events(run_dir: Path, record: dict) -> tuple[list[Path], dict[Path, str]]:
    """The run's own event files, and the others with why each is another run's."""
    own, others = [], {}
    for events in rundir.event_files(run_dir):
        why = foreign(events, record)
        if why is None:
            own.append(events)
        else:
            others[events] = why
    return own, others
