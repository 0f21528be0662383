"""Checkpoints (atomic save, checked load, RNG state) and the stop signals that trigger a save at a step boundary."""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import EtfTrainError, first_line, write_failure
from ..interrupt import STOP_SIGNALS, startup_sigint


def rng_state() -> dict:
    """Every generator's state in plain types and tensors (numpy's key as a tensor), which a checkpoint loaded with
    weights_only=True can hold."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]  # checkpoints from before weights_only hold key as a numpy array
    np.random.set_state((kind, np.asarray(key, dtype=np.int64).astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Seconds to sleep between writing the temporary file and renaming it: lets the fault-injection tests kill a
# run inside a checkpoint write. Unset in normal use.
SAVE_DELAY_ENV = "ETF_TRAIN_TEST_SAVE_DELAY_S"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over the old one.

    A write that fails (a full disk, a quota) removes the temporary file and keeps the previous checkpoint.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if os.environ.get(SAVE_DELAY_ENV):
            time.sleep(float(os.environ[SAVE_DELAY_ENV]))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        why = write_failure(e, path) or f"{type(e).__name__}: {first_line(e)}"
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
        raise EtfTrainError(f"cannot write checkpoint {path}: {why}; {kept}") from None


def load_checkpoint(path: Path, meta: dict, given: bool = False) -> dict:
    """Load a checkpoint and refuse one written for another model (head, classes, backbone, features).

    given: the path came from trainer.resume=PATH (a file the run did not write), which changes the advice.
    """
    _check_crc(path, given)
    try:  # weights_only: tensors and plain types; a pickled object (code a received run folder could carry) is refused
        with _numpy_arrays_allowed():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:  # not a refused object: damaged, or not a torch file
            _unreadable(path, type(e).__name__, given)
        raise EtfTrainError(
            f"checkpoint {path} holds a pickled {found.group(1).rstrip('.,')}, "
            "not only tensors and plain values: etf-train does not run code from a checkpoint; use "
            "checkpoints that etf-train wrote"
        ) from None
    except Exception as e:  # truncated, corrupt, or not a torch file
        _unreadable(path, type(e).__name__, given)
    if not isinstance(state, dict) or "meta" not in state:
        raise EtfTrainError(
            f"{path} is not an etf-train checkpoint; point trainer.resume at a run's checkpoints/last.pt"
        )
    if not isinstance(state.get("config"), dict):  # without it, a checkpoint of other settings (tau 1 for 5) passes
        raise EtfTrainError(
            f"checkpoint {path} holds no record of the settings it was trained with (an older "
            "etf-train wrote it, or it was stripped): they cannot be checked against this run's"
        )
    diff = {k: (state["meta"].get(k), v) for k, v in meta.items() if state["meta"].get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
        raise EtfTrainError(
            f"checkpoint {path} does not match this run ({what}); use another output folder or trainer.resume=never"
        )
    return state


def _check_crc(path: Path, given: bool) -> None:
    """torch.load reads a checkpoint's zip without checking its CRCs, so flipped bits in a weight would load unseen."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):  # not a zip, or truncated: torch.load says what it cannot read
        return
    if bad is not None:
        _unreadable(path, f"{bad} fails its CRC check: the file is damaged", given)


def _unreadable(path: Path, why: str, given: bool):
    advice = (
        "point trainer.resume at a run's checkpoints/last.pt"
        if given
        else "this run's own checkpoint is damaged: start the run again in a new folder"
    )
    raise EtfTrainError(f"cannot read checkpoint {path} ({why}); {advice}") from None


def _numpy_arrays_allowed():
    """Checkpoints written before the numpy RNG key was stored as a tensor hold one numpy array: allow numpy's array
    reconstruction (data, not code) in weights_only loads, where this torch can (2.5+)."""
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:
        return contextlib.nullcontext()
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in ("uint32", "int64")]
    return safe([core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes])


class Preempted(Exception):
    """A stop signal arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}")
        self.signum = signum


class SignalGuard:
    """SIGTERM, SIGUSR1 (SLURM pre-emption), SIGUSR2 (submitit's pre-emption signal), SIGINT and SIGHUP (a closed
    terminal, a dropped ssh session) set a flag that the loop reads at step boundaries.

    After the checkpoint is written, ``chain`` hands the signal to whatever handler was installed before
    (e.g. submitit's requeue handler), so cluster tools keep working.
    """

    SIGNALS = STOP_SIGNALS

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
        if self.received is None:  # said at once: an evaluation pass can take a while before the next boundary
            print(
                f"etf-train: {signal.Signals(signum).name} received: saving at the next step or epoch boundary, "
                "then stopping",
                file=sys.stderr,
                flush=True,
            )
        self.received = signum

    def chain(self) -> None:
        handler = self.previous.get(self.received)
        self.__exit__()
        if callable(handler) and handler not in (signal.default_int_handler, startup_sigint):
            handler(self.received, None)
