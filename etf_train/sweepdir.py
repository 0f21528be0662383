"""A sweep's own files beside its jobs' run folders, and YAML files found while scanning outputs/: the jobs refused
before they started (they leave no run folder), and a reader that skips what it cannot read."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

REFUSED = ".refused_jobs"  # in a sweep folder: a line per job refused before it started (it leaves no run folder)


def note_refused(sweep: Path, overrides: Sequence[str], message: str) -> None:
    """Record a sweep job refused at its start, so that the sweep's end can name it (lines appended: joblib's
    workers write at once)."""
    with (sweep / REFUSED).open("a") as f:
        f.write(f"{' '.join(overrides)}: {message}\n")


def refused_jobs(sweep: Path) -> list[str]:
    path = sweep / REFUSED
    return path.read_text().splitlines() if path.is_file() else []


def scanned_yaml(path: Path) -> object | None:
    """A YAML file found while scanning outputs/ (a run's overrides, a sweep's multirun.yaml), safely loaded; one
    that cannot be read is skipped with a warning naming it, so that it never blocks a new run or sweep."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"etf-train: warning: skipping {path}, which cannot be read ({first})", file=sys.stderr)
        return None
