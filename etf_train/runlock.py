"""One live process per run folder: the lock file `<run>/.etf-train.lock` (rundir.LOCK), taken atomically, holding
the owner's pid, host and start time; a lock whose process is gone (same host) is stale and taken over."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from .errors import EtfTrainError
from .rundir import LOCK


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("start") in (None, _start_ticks(int(owner["pid"])))


class RunLock:
    """A run folder is owned by one live process: a lock file taken atomically (O_CREAT | O_EXCL), holding pid,
    host and start time, removed on release; a lock whose process is gone (same host) is stale and taken over."""

    def __init__(self, run: Path):
        self.path = run / LOCK
        self.held = False

    def acquire(self) -> RunLock:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _start_ticks(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is removed and the atomic create retried
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise EtfTrainError(
                        f"run folder {self.path.parent} is in use by pid {owner['pid']} on {owner['host']} "
                        f"(since {owner.get('since', '?')}); wait for it to end or choose another folder"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise EtfTrainError(f"could not take the lock {self.path}: another process keeps taking it")

    def held_by_live_process(self) -> bool:
        owner = self._owner()
        return owner is not None and _alive(owner)

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # vanished, or a half-written lock of a process killed while writing it

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):  # a read-only folder: the next start finds the lock stale and takes it
                self.path.unlink(missing_ok=True)
            self.held = False
