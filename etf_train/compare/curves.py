"""Every logged value of the compared runs in long format (one row per run, epoch and tag): curves.csv, and the
same rows for a notebook without parsing event files.

    from etf_train.compare import curves
    rows = curves("outputs/multirun/2026-11-23/10-00-00_3f2a")     # [{"run", "group", "seed", "epoch", "tag", "value"}]
    import pandas as pd; df = pd.DataFrame(rows)                    # e.g. df[df.tag == "nc/nc1"].pivot(...)
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from .runs import RecordedRun, group_runs, load_runs

COLUMNS = ("run", "group", "seed", "epoch", "tag", "value")


def curve_rows(groups: dict[str, list[RecordedRun]]) -> list[dict]:
    """One row per (run, tag, logged epoch): run folder, group label, seed (None if unrecorded), epoch, tag, value."""
    rows = []
    for label, runs in groups.items():
        for run in runs:
            seed = OmegaConf.select(run.config, "seed", default=None)
            for tag in sorted(run.scalars):
                steps, values = run.scalars[tag]
                rows += [
                    {"run": str(run.path), "group": label, "seed": seed, "epoch": int(e), "tag": tag, "value": float(v)}
                    for e, v in zip(steps.tolist(), values.tolist())
                ]
    return rows


def curves(*folders: str | Path, group_by: Sequence[str] = ("head",), include_unfinished: bool = False) -> list[dict]:
    """The rows of curves.csv for the runs under `folders`, grouped as etf-compare groups them (`group_by`: config
    keys, `head` for head.name and its options); finished runs only unless include_unfinished."""
    groups = group_runs(load_runs([Path(f) for f in folders]), list(group_by))  # labelled over all runs, as etf-compare
    return curve_rows({label: [r for r in runs if r.included(include_unfinished)] for label, runs in groups.items()})


def write_curves(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
