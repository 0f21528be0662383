"""Checks of user-given option values: each returns the value or raises one EtfTrainError line naming the key.

YAML and the command line hand over strings, floats and bools where ints are expected (`width=no`,
`depth=1.5`), so every option that reaches a builder is checked here, with one wording everywhere.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
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


def number(key: str, value: Any, minimum: float | None = None, *, above: float | None = None,
           maximum: float | None = None, below: float | None = None) -> float:
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
