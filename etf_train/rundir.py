"""The run-folder contract, in one place: what the trainer writes, `etf-train` looks for and `etf-compare` reads.

    <run>/.hydra/config.yaml      the composed config (Hydra)
    <run>/.hydra/overrides.yaml   the command-line overrides (Hydra)
    <run>/events.out.tfevents.*   TensorBoard scalars, step = epoch number (1-based)
    <run>/checkpoints/last.pt     the latest checkpoint, replaced atomically
    <run>/checkpoints/finished    written once the last epoch is done

Importing this module costs no torch: the CLI reads it before deciding anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINT = Path("checkpoints") / "last.pt"
FINISHED = Path("checkpoints") / "finished"
EVENT_GLOB = "events.out.tfevents.*"

Curve = tuple[np.ndarray, np.ndarray]  # (steps int64 (n,), values float64 (n,)), steps ascending


def checkpoint(run: Path) -> Path:
    return run / CHECKPOINT


def is_finished(run: Path) -> bool:
    return (run / FINISHED).exists()


def mark_finished(run: Path) -> None:
    (run / FINISHED).touch()


def event_files(run: Path) -> list[Path]:
    return sorted(p for p in run.glob(EVENT_GLOB) if p.is_file())


def read_scalars(run: Path) -> dict[str, Curve]:
    """All scalars of the event files directly in `run`; per (tag, step) the latest wall time wins (a resumed
    run may hold several event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    latest: dict[str, dict[int, tuple[float, float]]] = {}  # tag -> step -> (wall_time, value)
    for events in event_files(run):
        # One accumulator per file, without TensorBoard's purging: the merge below decides.
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            by_step = latest.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                if ev.step not in by_step or ev.wall_time >= by_step[ev.step][0]:
                    # Events hold float32: take its shortest decimal, so a logged 0.1 reads 0.1 (and
                    # compares <= 0.1), not 0.10000000149.
                    by_step[ev.step] = (ev.wall_time, float(str(np.float32(ev.value))))
    scalars = {}
    for tag, by_step in latest.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        scalars[tag] = (steps, np.array([by_step[s][1] for s in steps.tolist()], dtype=np.float64))
    return scalars
