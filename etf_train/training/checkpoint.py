"""Checkpoints (atomic save, checked load, RNG state) and the stop signals that trigger a save at a step boundary."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import EtfTrainError


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, meta: dict) -> dict:
    """Load a checkpoint and refuse one written for another model (head, classes, backbone, features)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, corrupt, or not a torch file
        raise EtfTrainError(f"cannot read checkpoint {path}: {type(e).__name__}; delete it or set trainer.resume=never") from None
    if not isinstance(state, dict) or "meta" not in state:
        raise EtfTrainError(f"{path} is not an etf-train checkpoint; set trainer.resume=never or point it elsewhere")
    diff = {k: (state["meta"].get(k), v) for k, v in meta.items() if state["meta"].get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
        raise EtfTrainError(f"checkpoint {path} does not match this run ({what}); use another output folder or trainer.resume=never")
    return state


def resume_path(spec: str, run_dir: Path) -> Path | None:
    if spec == "never":
        return None
    if spec == "auto":
        path = run_dir / "checkpoints" / "last.pt"
        return path if path.exists() else None
    path = Path(spec)
    if not path.is_file():
        raise EtfTrainError(f"trainer.resume={spec}: no such checkpoint file")
    return path


class Preempted(Exception):
    """A stop signal arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}")
        self.signum = signum


class SignalGuard:
    """SIGTERM, SIGUSR1 (SLURM pre-emption), SIGUSR2 (submitit's pre-emption signal) and SIGINT set a flag
    that the loop reads at step boundaries.

    After the checkpoint is written, ``chain`` hands the signal to whatever handler was installed before
    (e.g. submitit's requeue handler), so cluster tools keep working.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT") if hasattr(signal, name))

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        self.received = signum

    def chain(self) -> None:
        handler = self.previous.get(self.received)
        self.__exit__()
        if callable(handler) and handler not in (signal.default_int_handler,):
            handler(self.received, None)
