"""What a start may do with its run folder: continue the run it holds, or start one in an empty folder, never mix.

One run per folder: a start with trainer.resume=auto continues the folder's run only with the settings that run
was started with (its record, `.hydra/config.yaml`), up to the keys that cannot change what it computes; every
other start into a folder that holds a run is refused in one line before anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import rundir
from ..errors import EtfTrainError
from ..rundir import changed_settings
from ..runlock import RunLock
from .checkpoint import load_checkpoint, set_rng_state


def refuse_changes(saved: dict, now: dict, where: str) -> None:
    changes = changed_settings(saved, now)
    if changes:
        more = (
            "; training longer than a run's trainer.max_epochs is a new run"
            if any(c.startswith("trainer.max_epochs:") for c in changes)
            else ""
        )
        shown = ", ".join(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise EtfTrainError(
            f"{where} was started with other settings ({shown}); rerun with its settings to continue "
            f"it, or start fresh in another folder (a new hydra.run.dir){more}"
        )


def checkpoint_to_resume(run_dir: Path, spec: str, config: dict) -> Path | None:
    """The checkpoint this start continues from (None: a fresh start), refusing every start that would mix runs."""
    record = rundir.read_record(run_dir)
    if spec == "auto":
        if record is not None:
            refuse_changes(record, config, f"the run in {run_dir}")
        elif rundir.holds_run(run_dir):
            raise EtfTrainError(
                f"{run_dir} holds checkpoints or event files but no {rundir.CONFIG}: not a run "
                "etf-train can continue; choose another folder"
            )
        path = rundir.checkpoint(run_dir)
        return path if path.exists() else None
    if spec != "never":
        path = Path(spec)
        if not path.is_file():
            raise EtfTrainError(f"trainer.resume={spec}: no such checkpoint file")
        if path.resolve() == rundir.checkpoint(run_dir).resolve():
            return checkpoint_to_resume(run_dir, "auto", config)
    if rundir.holds_run(run_dir):
        raise EtfTrainError(
            f"trainer.resume={spec} starts a new run, but {run_dir} already holds one (one run per "
            "folder, or TensorBoard would mix their curves); choose another hydra.run.dir"
        )
    return None if spec == "never" else Path(spec)


class RunFolder:
    """This process's hold on its run folder, from the claim (lock, resume decision) through the start (the record
    is written) to the end (a failure recorded, or a folder that never started left as it was). Rank 0 acts on
    the files; every rank follows its decisions."""

    def __init__(self, run_dir: Path, main: bool):
        self.run_dir, self.main = run_dir, main
        self.lock = RunLock(run_dir)
        self.started = False

    def claim(self, spec: str, config: dict) -> Path | None:
        """Take the folder and decide where training continues from; a refusal leaves the folder as it was."""
        try:
            if self.main:
                self.lock.acquire()
            return checkpoint_to_resume(self.run_dir, spec, config)
        except BaseException:
            self.end()
            raise

    def start(self, config: dict, record: tuple | None) -> None:
        """Training begins: a fresh run writes its record; a resumed failed run is no longer failed, and a run that
        trains again (a finished run whose checkpoint is gone starts over) is no longer finished until it ends."""
        self.started = True
        if self.main:
            saved = rundir.read_record(self.run_dir)
            if saved is None:
                rundir.write_record(self.run_dir, config, *(record or ()))
            elif str(saved.get("code_version", "")).rsplit(" then ", 1)[-1] != (now := str(config["code_version"])):
                # continued under other code: the record says so, and etf-compare then counts it as its own version
                saved["code_version"] = f"{saved.get('code_version', 'not recorded')} then {now}"
                rundir.write_record(self.run_dir, saved)
            (self.run_dir / rundir.FAILED).unlink(missing_ok=True)
            (self.run_dir / rundir.FINISHED).unlink(missing_ok=True)

    def end(self, failure: str | None = None) -> None:
        if self.main and failure is not None and self.started:
            rundir.mark_failed(self.run_dir, failure)
        self.lock.release()
        if self.main and not self.started:
            rundir.remove_if_empty(self.run_dir)


def restore(
    path: Path | None, meta: dict, config: dict, given: bool, model, optimizer, scheduler
) -> tuple[int, dict | None, dict | None]:
    """Load the checkpoint the claim chose into the model, optimiser and schedule: (completed epochs, partial-epoch
    state, RNG state); (0, None, None) for a fresh start. given: the checkpoint is another folder's
    (trainer.resume=PATH), which words the advice and must leave something to train."""
    if path is None:
        return 0, None, None
    state = load_checkpoint(path, meta, given=given)
    refuse_changes(state["config"], config, f"checkpoint {path}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. another train-set size for the UFM features
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise EtfTrainError(
            f"checkpoint {path} does not fit this model ({first}); use another output folder or trainer.resume=never"
        ) from None
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if given and state["epoch"] >= config["trainer"]["max_epochs"]:  # the new folder would hold a run of no epochs
        raise EtfTrainError(
            f"checkpoint {path} is of a run that finished all its {state['epoch']} epochs: nothing "
            "to train; `etf-eval` evaluates it, and training longer is a new run"
        )
    partial = state.get("partial")
    where = f"epoch {partial['epoch']}, step {partial['step']}" if partial else f"the end of epoch {state['epoch']}"
    logging.getLogger("etf_train").info("resumed from %s at %s", path, where)
    if partial is None:
        set_rng_state(state["rng"])
    return state["epoch"], partial, state["rng"]
