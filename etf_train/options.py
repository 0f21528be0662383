"""Checks of user-given option values: each returns the value or raises one EtfTrainError line naming the key.

YAML and the command line hand over strings, floats and bools where ints are expected (`width=no`,
`depth=1.5`), so every option that reaches a builder is checked here, with one wording everywhere. The output
paths of etf-eval and etf-compare are checked here too, and their file-system errors worded as one line.
"""

from __future__ import annotations

import math
import operator
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import EtfTrainError


def integer(key: str, value: Any, minimum: int = 1) -> int:
    """An int >= minimum (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise EtfTrainError(f"{key} must be {need}, got {value!r}")
    return value


def boolean(key: str, value: Any) -> bool:
    # A YAML string such as "no" would otherwise be truthy.
    if not isinstance(value, bool):
        raise EtfTrainError(f"{key} must be true or false, got {value!r}")
    return value


def number(
    key: str,
    value: Any,
    minimum: float | None = None,
    *,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> float:
    """A finite number within the given bounds: >= minimum, > above, <= maximum, < below."""
    bounds = {">=": minimum, ">": above, "<=": maximum, "<": below}
    tests = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and all(tests[op](value, b) for op, b in bounds.items() if b is not None)
    if not ok:
        where = " and ".join(f"{op} {b:g}" for op, b in bounds.items() if b is not None)
        raise EtfTrainError(f"{key} must be a finite number{' ' + where if where else ''}, got {value!r}")
    return float(value)


def choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise EtfTrainError(f"{key}={value!r} must be one of {', '.join(choices)}")
    return value


def _reason(error: OSError | ValueError) -> str:
    if isinstance(error, FileExistsError):  # mkdir(exist_ok=True) raises it only for a file in the folder's place
        return f"{error.filename} is a file, not a folder"
    return getattr(error, "strerror", None) or str(error)


def output_folder(option: str, folder: Path, given: bool = True) -> Path:
    """`folder`, made if missing and tried with a temporary file, so that a file of that name, a place that cannot be
    made or written, or a name the file system refuses (too long, a NUL) is one line before any work. given: False
    where the folder is the option's default."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        named = f"{option} {folder}" if given else f"{folder} (the default {option})"
        raise EtfTrainError(f"{named}: cannot write there ({_reason(e)})") from None
    return folder


def output_file(option: str, path: Path) -> Path:
    """`path`, its folder made and the name itself tried (a file made for the try is removed again), so that a name
    the file system refuses, or a folder in the way, is one line before any work."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        made = not path.exists()
        path.open("ab").close()
    except (OSError, ValueError) as e:
        raise EtfTrainError(f"{option} {path}: cannot write it ({_reason(e)})") from None
    if made:
        path.unlink()
    return path


@contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Write `path` in the block: a failure (a full disk, a folder of that name) is one line naming it."""
    try:
        yield path
    except OSError as e:
        raise EtfTrainError(f"cannot write {path} ({_reason(e)})") from None


def error_line(error: EtfTrainError | OSError) -> str:
    """What a command prints after `error: `: the first line of its own error; a file-system error (a path too long,
    a folder where a file belongs) as the file and the system's reason."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {_reason(error)}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
