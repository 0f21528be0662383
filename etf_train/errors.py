"""The one exception type that reaches users as a single line (see cli.py), and the words for failed writes."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class EtfTrainError(ValueError):
    """Bad input or an unrecoverable run condition, worded for the user."""


class NonFiniteError(EtfTrainError):
    """NaN or inf reached the model's features, class means or loss (the run diverged)."""


# What a failed write means to a user, by errno: the disk or the folder, not the program.
WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file size limit is reached",
}
FULL_MB = 1  # under this much free space (MB) a disk counts as full (torch's zip writer gives no errno)


def free_mb(path: Path) -> int:
    """Free space (MB) on the disk holding path, or the nearest folder above it that exists."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free >> 20


def write_failure(error: BaseException, path: Path) -> str | None:
    """Why a write failed, `<why> (N MB free there)`, for an error that a full disk or an unwritable folder causes;
    None for any other error. path: what was being written."""
    why, free = WRITE_ERRORS.get(getattr(error, "errno", None)), free_mb(path)
    if why is None and isinstance(error, (OSError, RuntimeError)) and free < FULL_MB:
        why = WRITE_ERRORS[errno.ENOSPC]
    return None if why is None else f"{why} ({free} MB free there)"


def as_etf_error(error: Exception, log: Path) -> EtfTrainError:
    """etf-train's own errors as they are; a failed write as its cause and remedy; any other (out of memory, a
    library's error) as one line naming its type and first line, and the log file that holds its traceback."""
    if isinstance(error, EtfTrainError):
        return error
    where = Path(getattr(error, "filename", None) or log.parent)
    why = write_failure(error, where)
    if why is not None:
        return EtfTrainError(
            f"cannot write {where}: {why}; make room (or fix the folder), then run the same command "
            "again to continue from the last checkpoint"
        )
    return EtfTrainError(f"{type(error).__name__}: {first_line(error)} (the traceback is in {log})")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def one_line(error: BaseException) -> str:
    """The message of an error, reduced to its last line when it comes wrapped in a DataLoader worker's traceback."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(error).__name__
    last = lines[-1]
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last
