"""Optimiser steps an epoch (the record's sizes.steps_per_epoch): a warning when compared groups take different
numbers, and the curves over steps instead of epochs (`etf-compare --x steps`). AGD's step length hardly depends on
the batch size, so under it an epoch of 4 steps goes further than one of 3: epochs of different step counts are
not comparable (e.g. the authors' nearest-ETF batching against their other heads')."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..errors import EtfTrainError
from .runs import RecordedRun, config_text
from .setting import readable

KEY = "sizes.steps_per_epoch"


def step_counts(groups: dict[str, list[RecordedRun]]) -> list[str]:
    """A warning when the groups' runs take different numbers of steps an epoch (runs that do not record it are
    left out of the check)."""
    counts = {label: sorted({config_text(r, KEY) for r in rs} - {"-"}, key=int) for label, rs in groups.items()}
    counts = {label: c for label, c in counts.items() if c}
    if len({tuple(c) for c in counts.values()}) < 2:
        return []
    each = "; ".join(f"{readable(label)}: {'/'.join(c)}" for label, c in counts.items())
    return [
        f"the groups take different numbers of optimiser steps an epoch ({each}): an epoch is not the same "
        "amount of training for each, so threshold epochs favour the group with more steps; --x steps draws the "
        "curves over steps"
    ]


def over_steps(groups: dict[str, list[RecordedRun]]) -> dict[str, list[RecordedRun]]:
    """The groups with every run's curves indexed by optimiser steps (epoch x steps an epoch) instead of epochs."""
    missing = [r for rs in groups.values() for r in rs if not config_text(r, KEY).isdigit()]
    if missing:
        raise EtfTrainError(
            f"--x steps: {_named(missing)} record no steps an epoch (an etf-train older than {KEY}); use --x epochs"
        )
    return {label: [_scaled(r, int(config_text(r, KEY))) for r in rs] for label, rs in groups.items()}


def _scaled(run: RecordedRun, steps: int) -> RecordedRun:
    scalars = {tag: (np.asarray(epochs) * steps, values) for tag, (epochs, values) in run.scalars.items()}
    return dataclasses.replace(run, scalars=scalars)


def _named(runs: Sequence[RecordedRun]) -> str:
    return f"{runs[0].path}" + (f" and {len(runs) - 1} more runs" if len(runs) > 1 else "")
