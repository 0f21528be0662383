"""Ctrl-C before training starts: a KeyboardInterrupt, but never one raised inside omegaconf.

omegaconf restores config flags in `finally` blocks; a KeyboardInterrupt raised in the middle of one can leave a
node half-built, and the clean-up then fails with an unrelated AttributeError that Hydra prints as a traceback
(tests/test_runfolder.py::test_ctrl_c_during_start_up_is_one_line). So a Ctrl-C that lands inside omegaconf is
re-checked every RETRY_S and raised as soon as Python has left it. Once training runs, the loop's SignalGuard takes
SIGINT over and saves a checkpoint first.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

RETRY_S = 0.02
# The signals that stop a run with a checkpoint: Ctrl-C, kill and Slurm's scancel/time limit (SIGTERM), a closed
# terminal (SIGHUP), Slurm's and submitit's pre-emption notices (SIGUSR1, SIGUSR2).
STOP_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, n)
)
_HELD_IN = ("omegaconf",)  # top-level packages a KeyboardInterrupt must not be raised in


def _inside(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] in _HELD_IN:
            return True
        frame = frame.f_back
    return False


def startup_sigint(signum: int, frame: FrameType | None) -> None:
    """SIGINT handler (and its SIGALRM retry): KeyboardInterrupt now, or once the interrupted code is outside
    omegaconf. The retry uses ITIMER_REAL, which nothing else in etf-train or Hydra sets."""
    if _inside(frame) and hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, startup_sigint)
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    raise KeyboardInterrupt


# A file to create once the handler is in place: lets a test send Ctrl-C inside start-up without guessing how long
# the process takes to get there. Unset in normal use.
READY_ENV = "ETF_TRAIN_TEST_STARTUP_READY"


def install() -> None:
    """For the CLI's start-up; a no-op off the main thread, where Python allows no signal handlers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, startup_sigint)
        if os.environ.get(READY_ENV):
            Path(os.environ[READY_ENV]).touch()
