"""The run-folder contract, in one place: what the trainer writes, `etf-train` looks for and `etf-compare` reads.

    <run>/.hydra/config.yaml      the composed config (Hydra)
    <run>/.hydra/overrides.yaml   the command-line overrides (Hydra)
    <run>/events.out.tfevents.*   TensorBoard scalars, step = epoch number (1-based)
    <run>/checkpoints/last.pt     the latest checkpoint, replaced atomically
    <run>/checkpoints/finished    written once the last epoch is done
    <run>/checkpoints/failed      the one-line reason a started run stopped with an error
    <run>/.etf-train.lock         pid, host and start time of the process that owns the folder while it runs

etf-train writes `.hydra/` itself (Hydra's own writing is switched off), only once a start has passed every
check, so a refused start leaves a folder as it was. Importing this module costs no torch: the CLI reads it
before deciding anything.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf

from .errors import EtfTrainError

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
HYDRA = Path(".hydra") / "hydra.yaml"
CHECKPOINT = Path("checkpoints") / "last.pt"
FINISHED = Path("checkpoints") / "finished"
FAILED = Path("checkpoints") / "failed"
LOCK = Path(".etf-train.lock")
LOG = Path("cli.log")  # Hydra's job log (the job is named after etf_train/cli.py)
EVENT_GLOB = "events.out.tfevents.*"

Curve = tuple[np.ndarray, np.ndarray]  # (steps int64 (n,), values float64 (n,)), steps ascending


def checkpoint(run: Path) -> Path:
    return run / CHECKPOINT


def is_finished(run: Path) -> bool:
    return (run / FINISHED).exists()


def mark_finished(run: Path) -> None:
    (run / FAILED).unlink(missing_ok=True)
    (run / FINISHED).touch()


def mark_failed(run: Path, reason: str) -> None:
    """Best effort: on a full disk the marker may not fit, and the run's one line says why anyway (the same command
    then resumes it, which is what a user wants once there is room)."""
    try:
        (run / FAILED).parent.mkdir(parents=True, exist_ok=True)
        (run / FAILED).write_text(reason + "\n")
    except OSError:
        (run / FAILED).unlink(missing_ok=True)  # an empty marker would hide the reason


def failure(run: Path) -> str | None:
    """The reason a run failed, or None."""
    path = run / FAILED
    return path.read_text().strip() if path.exists() else None


def event_files(run: Path) -> list[Path]:
    return sorted(p for p in run.glob(EVENT_GLOB) if p.is_file())


def holds_run(run: Path) -> bool:
    """True when the folder holds (part of) a run: its record, a checkpoint or event files."""
    return (run / CONFIG).exists() or checkpoint(run).exists() or bool(event_files(run))


def remove_if_empty(run: Path) -> None:
    """Remove a folder that holds nothing but an empty job log (what Hydra makes before a start is refused)."""
    if not run.is_dir():
        return
    entries = list(run.iterdir())
    if all(p.name == LOG.name and p.is_file() and p.stat().st_size == 0 for p in entries):
        for p in entries:
            p.unlink()
        run.rmdir()


def write_record(run: Path, config: dict, overrides: list[str] | None = None, hydra: dict | None = None) -> None:
    """`.hydra/config.yaml` (the resolved config), and Hydra's overrides and own settings when run by the CLI."""
    files = {OVERRIDES: overrides, HYDRA: None if hydra is None else {"hydra": hydra}, CONFIG: config}
    for name, content in files.items():  # config.yaml last and atomically: once it exists, the record is whole
        if content is not None:
            path = run / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(content)))
            os.replace(tmp, path)


@functools.cache  # one answer per process: a sweep's jobs would otherwise run git twice each
def code_version() -> str:
    """etf-train's version, with the commit of a git checkout (`0.1.0+g1a2b3c4d5e`, `.dirty` when etf_train/ or
    configs/ have uncommitted changes): each record holds it, so that etf-compare can say when it pools runs made
    before and after a fix (docs/reliability.md lists what fixes changed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("etf-train")
    except PackageNotFoundError:
        found = "unknown"
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # an installed package, not a checkout
        return found
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, timeout=30)
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "etf_train", "configs"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):  # no git here
        return found
    if commit.returncode != 0:
        return found
    return f"{found}+g{commit.stdout.strip()}" + (".dirty" if changed.stdout.strip() else "")


def read_record(run: Path) -> dict | None:
    """The run's resolved config, read with YAML's safe loader (a `!!python/...` tag is refused, never constructed);
    None where there is none; a record that does not parse, or is no mapping, is one line naming the file."""
    path = run / CONFIG
    if not path.exists():
        return None
    try:
        record = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EtfTrainError(f"cannot read the run record {path} ({first}): it is damaged or not etf-train's") from None
    sections = {"trainer", *(key.split(".")[0] for key in ADDED)}  # read as mappings (by migrate, by etf-eval)
    if not isinstance(record, dict) or any(not isinstance(record.get(s, {}), dict) for s in sections):
        raise EtfTrainError(f"the run record {path} is not an etf-train config (a mapping with its sections)")
    return migrate(record)


def migrate(record: dict) -> dict:
    """A record in today's keys. Every config group names its choice by `name` (or `_target_` for a class); records
    written before that named the backbone by `backbone.arch`, with a timm model in `backbone.name` (now
    `backbone.model`), and the solver by `head.solver.method`. Options added since (ADDED) take the value the run
    ran with."""
    out = dict(record)
    for key, value in ADDED.items():
        section, leaf = key.split(".")
        part = out.get(section, {})
        if isinstance(part, dict) and leaf not in part:
            out[section] = {**part, leaf: value}
    backbone = out.get("backbone")
    if isinstance(backbone, dict) and "arch" in backbone:
        rest = {("model" if k == "name" else k): v for k, v in backbone.items() if k != "arch"}
        out["backbone"] = {"name": backbone["arch"], **rest}
    head = out.get("head")
    solver = head.get("solver") if isinstance(head, dict) else None
    if isinstance(solver, dict) and "method" in solver:
        rest = {k: v for k, v in solver.items() if k != "method"}
        out["head"] = {**head, "solver": {"name": solver["method"], **rest}}
    return out


# ----------------------------------------------------------------------------- state, as etf-compare reports it


@dataclass(frozen=True)
class RunState:
    status: str  # finished | failed | unfinished
    detail: str = ""  # the failure's reason


def state(run: Path) -> RunState:
    if is_finished(run):
        return RunState("finished")
    reason = failure(run)
    return RunState("failed", reason) if reason is not None else RunState("unfinished")


def read_scalars(run: Path, files: Sequence[Path] | None = None) -> dict[str, Curve]:
    """All scalars of the event files directly in `run` (or of `files` only), as TensorBoard shows them: files in the
    order they were started, and a file that starts with a purge step (a resumed run:
    SummaryWriter(purge_step=epoch)) discards the earlier files' events at that step and after (epochs a crashed
    attempt logged past its checkpoint); otherwise, per (tag, step), the latest event wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    started = []  # (wall time of the first summary, else of the first event; purge step or None; path)
    for events in event_files(run) if files is None else files:
        first, purge = None, None
        for ev in EventFileLoader(str(events)).Load():  # the purge step comes before any summary
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                purge = ev.step
            if ev.HasField("summary"):
                first = ev.wall_time
                break
            first = ev.wall_time if first is None else first
        started.append((math.inf if first is None else first, purge, events))
    latest: dict[str, dict[int, float]] = {}  # tag -> step -> value
    for _, purge, events in sorted(started, key=lambda t: (t[0], t[2].name)):
        if purge is not None:
            for by_step in latest.values():
                for step in [s for s in by_step if s >= purge]:
                    del by_step[step]
        # One accumulator per file, without TensorBoard's purging: the merge above decides.
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            by_step = latest.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                # Events hold float32: take its shortest decimal, so a logged 0.1 reads 0.1 (and
                # compares <= 0.1), not 0.10000000149.
                by_step[ev.step] = float(str(np.float32(ev.value)))
    scalars = {}
    for tag, by_step in latest.items():
        if by_step:
            steps = np.array(sorted(by_step), dtype=np.int64)
            scalars[tag] = (steps, np.array([by_step[s] for s in steps.tolist()], dtype=np.float64))
    return scalars


# Keys that cannot change what a run computes (display, speed, where files are), or only which random draws the
# on-device augmentation takes (trainer.device): they may differ on resume, and between runs etf-compare
# pools (see neutral_keys for the exceptions). code_version may differ on resume (a fix pulled in between); etf-compare
# names mixed versions in a warning of their own. metrics.every_n_epochs is not one: it sets how fine threshold epochs
# are, and a resume that changed it would leave a run logged at two intervals under a record naming one.
NEUTRAL = (
    "trainer.progress",
    "trainer.resume",
    "trainer.device",
    "trainer.compile",
    "trainer.channels_last",
    "trainer.eval_batch_size",
    "trainer.save_every_n_epochs",
    "trainer.checkpoint_every_s",
    "loader.num_workers",
    "dataset.root",
    "dataset.download",
    "optimized_metric",
    "code_version",
    "sizes",  # K, sample counts and d, as built: they follow from the settings, which are compared themselves
)


def neutral_keys(*configs: dict) -> tuple[str, ...]:
    """NEUTRAL less the keys that do change results for these configs: an image folder (or ImageNet) is whatever its
    root holds; a head that centres by the batch mean (head.center=batch) gives other eval logits for another eval
    batch size."""
    keys = set(NEUTRAL)
    for config in configs:
        if (config.get("dataset") or {}).get("name") in ("image_folder", "imagenet"):
            keys.discard("dataset.root")
        if (config.get("head") or {}).get("center") == "batch":
            keys.discard("trainer.eval_batch_size")
    return tuple(sorted(keys))


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(node, dict) or (prefix and not node):
        return {prefix: node}
    out: dict[str, object] = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# Keys the record gains when a run starts (a folder's file list, the process count, AGD's depth as resolved for the
# model): older records lack them, and the config a command composes does not have them yet, so unset is no change.
BUILT = ("dataset.files", "trainer.processes", "optimizer.effective_depth")

# The key that names a group's choice: when it differs, the group's other keys differ as a matter of course.
IDENTITY = ("name", "_target_")


# Options added after runs were recorded without them: a record lacking one ran with this value (migrate).
ADDED = {
    "dataset.flip": True,
    "loader.stratified_folds": False,
    "trainer.cudnn_benchmark": None,
    "trainer.tf32": None,
    "metrics.erank_sw": True,
}


def changed_settings(saved: dict, now: dict) -> list[str]:
    """`key: old -> new` for every key that differs and could change the results, on resume or between two compared
    runs. A changed choice of a group (e.g. head.name) stands for the options only one of the two choices has; the
    options both have (head.tau, dataset.label_noise) are listed when they differ."""
    a, b = (flatten(migrate(config)) for config in (saved, now))
    missing = "(unset)"
    neutral = neutral_keys(saved, now)
    changed = [
        k
        for k in sorted(a.keys() | b.keys())
        if a.get(k, missing) != b.get(k, missing)
        and not k.startswith(neutral)
        and not (k in BUILT and missing in (a.get(k, missing), b.get(k, missing)))
    ]
    swapped = [k.rsplit(".", 1)[0] + "." for k in changed if k.rsplit(".", 1)[-1] in IDENTITY]

    def covered(k: str) -> bool:  # an option of one side only, under a swapped group (head.solver.name under head.)
        return not (k in a and k in b) and any(k.startswith(p) and k[len(p) :] not in IDENTITY for p in swapped)

    return [f"{k}: {a.get(k, missing)} -> {b.get(k, missing)}" for k in changed if not covered(k)]
