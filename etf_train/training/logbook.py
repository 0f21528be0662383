"""The run's TensorBoard record (rank 0): scalars per epoch; at a fresh start the composed config as text, its
HParams (written through the run's own writer, so the HParams tab lists a sweep's runs side by side; not
SummaryWriter.add_hparams, which makes a time-stamped sub-run with copies of the scalars) and a custom-scalars
layout; at the end the HParams session's status and a figure or two."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams, scalar

from ..view import KEY_CARDS
from ..rundir import flatten

# The HParams tab's metric columns: the final values of these scalars (they are logged every epoch or metrics epoch).
HPARAM_METRICS = (*KEY_CARDS, "test/loss", "train/acc")
log = logging.getLogger("etf_train")
LAYOUT = {"convergence": {tag: ["Multiline", [f"^{tag}$"]] for tag in KEY_CARDS}}


def _hparam_value(value):
    """HParams take numbers, strings and bools; lists and None become their text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class Logbook:
    def __init__(self, run_dir: Path, config: dict, first_epoch: int):
        # purge_step: events of epochs after the checkpoint (written before a crash) give way to the new ones
        self.writer = SummaryWriter(str(run_dir), purge_step=first_epoch)
        self.ended = None
        if first_epoch == 1:
            self.writer.add_text("config", f"```yaml\n{OmegaConf.to_yaml(OmegaConf.create(config))}```", 0)
            params = {k: _hparam_value(v) for k, v in flatten(config).items()}
            experiment, start, self.ended = hparams(params, dict.fromkeys(HPARAM_METRICS, 0.0))
            for summary in (experiment, start):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_custom_scalars(LAYOUT)
        else:
            _, _, self.ended = hparams({}, {})

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        """One event per epoch holding every scalar (as TensorBoard reads any summary with several values): a third
        of the cost of an event per tag, which was a UFM epoch's largest cost after the NC metrics; flushed, so a
        crash loses no finished epoch."""
        summary = Summary(value=[scalar(tag, value).value[0] for tag, value in values.items()])
        self.writer.file_writer.add_summary(summary, epoch)
        self.writer.flush()

    def figure(self, tag: str, figure, epoch: int) -> None:
        self.writer.add_figure(tag, figure, epoch, close=False)

    def close(self, finished: bool) -> None:
        if finished:  # the HParams session ends (status success); an interrupted run's session stays open
            self.writer.file_writer.add_summary(self.ended)
        self.writer.close()


def show_progress(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


def log_to_file(message: str) -> None:
    """Write an error line into the run's log file (Hydra's job log) only: the console shows it once, on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def summary(scalars: dict[str, float]) -> str:
    keys = ("train/loss", "train/acc", "test/acc", "nc/nc1", "solver/ms", "time/epoch_s")
    return "  ".join(f"{k}={scalars[k]:.4g}" for k in keys if k in scalars)

