"""The run's TensorBoard record (rank 0): scalars per epoch; at a fresh start the composed config as text, its
HParams (written through the run's own writer, so the HParams tab lists a sweep's runs side by side; not
SummaryWriter.add_hparams, which makes a time-stamped sub-run with copies of the scalars) and a custom-scalars
layout; at the end the HParams session's status and a figure or two."""

from __future__ import annotations

import logging
import math
import sys
import threading
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams, scalar

from ..errors import first_line, write_failure
from ..rundir import IDENTITY, flatten, read_scalars
from ..tags import EPOCH_S, EVAL_ACC, NC1, NC1_LOG10, SOLVER_MS, TEST_ACC, TEST_LOSS, TRAIN_ACC, TRAIN_LOSS, epochs_to
from ..view import KEY_CARDS

# How fast a run converged, as scalars the HParams tab can show beside the finals: `epochs_to/<what>` is logged once,
# at the first (metrics) epoch that reaches the threshold, with that epoch as its value (blank: never reached).
CONVERGENCE = (
    (NC1, 1.0, False),
    (NC1, 0.1, False),
    (NC1, 0.01, False),
    (NC1, 1e-3, False),
    (EVAL_ACC, 99.0, True),
    (TEST_ACC, 90.0, True),
)
# Settings the HParams tab shows after the swept keys (the full config is in the `config` text and .hydra/).
KEY_PARAMS = (
    "head.name",
    "seed",
    "optimizer._target_",
    "optimizer.lr",
    "optimizer.gain",
    "optimizer.effective_depth",
    "head.tau",
    "loss.name",
    "dataset.name",
    "sizes.num_classes",
    "backbone.name",
    "trainer.max_epochs",
)


# The HParams tab's metric columns: the final values of these scalars, then how soon the run converged.
HPARAM_METRICS = (*KEY_CARDS, TEST_LOSS, TRAIN_ACC, *(epochs_to(*c) for c in CONVERGENCE))
log = logging.getLogger("etf_train")
LAYOUT = {"convergence": {tag: ["Multiline", [f"^{tag}$"]] for tag in KEY_CARDS}}


def swept_keys(record: tuple | None, config: dict) -> list[str]:
    """The config keys a sweep varies for this job, from its command line less the constant overrides etf-train
    keeps out of the folder name (hydra.job.config.override_dirname.exclude_keys); a group (`head=learned`) as its
    node's identity key (`head.name`)."""
    if not record or not record[1]:
        return []
    excluded = set(
        ((record[1].get("job") or {}).get("config") or {}).get("override_dirname", {}).get("exclude_keys") or []
    )
    flat, out = flatten(config), []
    for override in record[0]:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in excluded or key.startswith("hydra"):
            continue
        key = key.replace("/", ".")
        out.append(key if key in flat else next((f"{key}.{i}" for i in IDENTITY if f"{key}.{i}" in flat), key))
    return [k for k in dict.fromkeys(out) if k in flat]


def _hparam_value(value):
    """HParams take numbers, strings and bools; lists and None become their text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class Logbook:
    def __init__(self, run_dir: Path, config: dict, first_epoch: int, record: tuple | None = None):
        """record: the CLI's (overrides, Hydra's settings), which name the keys a sweep varies (swept_keys)."""
        if threading.excepthook is not _quiet_writer_thread:
            _quiet_writer_thread.previous = threading.excepthook
            threading.excepthook = _quiet_writer_thread
        # purge_step: events of epochs after the checkpoint (written before a crash) give way to the new ones
        self.writer = SummaryWriter(str(run_dir), purge_step=first_epoch)
        self.ended = None
        # thresholds met before a resume were logged then (the events of those epochs stay)
        earlier = read_scalars(run_dir) if first_epoch > 1 else {}
        self.pending = [c for c in CONVERGENCE if not _reached(earlier.get(c[0]), *c[1:], before=first_epoch)]
        # every attempt's file names its run, so that etf-compare can leave out a file copied in from another run
        self.writer.add_text("config", f"```yaml\n{OmegaConf.to_yaml(OmegaConf.create(config))}```", 0)
        if first_epoch == 1:
            flat = flatten(config)
            # the swept keys first, then the settings that tell runs apart; not every constant of the config
            keys = dict.fromkeys([*swept_keys(record, config), *(k for k in KEY_PARAMS if k in flat)])
            params = {k: _hparam_value(flat[k]) for k in keys}
            experiment, start, self.ended = hparams(params, dict.fromkeys(HPARAM_METRICS, 0.0))
            for summary in (experiment, start):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_custom_scalars(LAYOUT)
        else:
            _, _, self.ended = hparams({}, {})

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        """One event per epoch holding every scalar (as TensorBoard reads any summary with several values): one
        record to serialise and write, not one per tag (docs/benchmarks.md); flushed, so a crash loses no finished
        epoch."""
        values = dict(values)
        if values.get(NC1, 0) > 0:
            values[NC1_LOG10] = math.log10(values[NC1])
        for c in list(self.pending):
            value = values.get(c[0])
            if value is not None and (value >= c[1] if c[2] else value <= c[1]):
                values[epochs_to(*c)] = float(epoch)
                self.pending.remove(c)
        summary = Summary(value=[scalar(tag, value).value[0] for tag, value in values.items()])
        self.writer.file_writer.add_summary(summary, epoch)
        self.writer.flush()

    def figure(self, tag: str, figure, epoch: int) -> None:
        self.writer.add_figure(tag, figure, epoch, close=False)

    def close(self, finished: bool) -> None:
        try:
            if finished:  # the HParams session ends (status success); an interrupted run's session stays open
                self.writer.file_writer.add_summary(self.ended)
            self.writer.close()
        except OSError:  # a full disk: a run that did not finish already reports why, in one line
            if finished:
                raise


def _quiet_writer_thread(args) -> None:
    """TensorBoard's writer thread raises a failed write again in the main thread at the next flush, where the run
    reports it in one line; the thread's own traceback would only repeat it on the terminal."""
    if not (issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        _quiet_writer_thread.previous(args)


def quiet_log_files() -> None:
    """A log file that cannot be written (a full disk) is said once on stderr; Python's logging would print a
    traceback for every line logged."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = _say_once(handler)


def _say_once(handler: logging.FileHandler):
    said = []

    def handle_error(record: logging.LogRecord) -> None:
        if not said:
            said.append(True)
            error, path = sys.exc_info()[1], Path(handler.baseFilename)
            print(
                f"etf-train: warning: cannot write the log {path}: {write_failure(error, path) or first_line(error)}",
                file=sys.stderr,
            )

    return handle_error


def _reached(curve, value: float, above: bool, before: int) -> bool:
    if curve is None:
        return False
    steps, values = curve
    hit = (values >= value) if above else (values <= value)
    return bool((hit & (steps < before)).any())


def show_progress(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


def log_to_file(message: str, exc_info: bool = False) -> None:
    """Write an error line (and with exc_info the traceback being handled) into the run's log file (Hydra's job log)
    only: the console shows it once, on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, sys.exc_info() if exc_info else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def summary(scalars: dict[str, float]) -> str:
    keys = (TRAIN_LOSS, TRAIN_ACC, TEST_ACC, NC1, SOLVER_MS, EPOCH_S)
    return "  ".join(f"{k}={scalars[k]:.4g}" for k in keys if k in scalars)
