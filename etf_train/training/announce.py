"""What a run says about itself: the block at its start (what it trains, with what, for how long, and which of
those settings came from the command line, the dataset's defaults or a preset) and, from its first epoch on, how
long the rest will take."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from ..rundir import flatten

log = logging.getLogger("etf_train")
LONG_CPU_RUN_S = 3600  # a CPU run longer than this says so once, with the quick alternatives
QUICK = "backbone=fast_cnn, dataset.limit_train=5000, trainer.max_epochs=20"


def _group_file(configs: Path, group: str, name: str) -> dict:
    path = configs / group / f"{name}.yaml"
    return (OmegaConf.to_container(OmegaConf.load(path)) or {}) if path.exists() else {}


def _sets(configs: Path, group: str, name: str, package: str = "") -> set[str]:
    """The keys (`trainer.max_epochs`) and groups (`backbone`) a config file sets, with the files it includes from
    its own group (an experiment's paper_recipe, a dataset's budget); `package`: where the file's own keys go
    (`dataset.` for a dataset's; "" for the global package of experiments and budgets)."""
    node = _group_file(configs, group, name)
    out = {f"{package}{k}" for k in flatten({k: v for k, v in node.items() if k != "defaults"})}
    for entry in node.get("defaults") or []:
        if not isinstance(entry, dict):
            out |= _sets(configs, group, str(entry), package) if entry != "_self_" else set()
            continue
        (key, value), *_ = entry.items()
        if key.startswith("override "):
            out.add(key.removeprefix("override ").lstrip("/").split("@")[0])
        else:  # `budget@_global_: paper`: a file of this group's subfolder, in the global package
            out |= _sets(configs / group, key.split("@")[0], str(value))
    return out


def sources(record: tuple | None, config: dict) -> dict[str, str]:
    """Where a key or group's value came from, for those not left at etf-train's defaults: `command line`, `dataset
    <name>` or `experiment=<name>` (the later one wins, as in Hydra's composition). From the CLI's record: its
    overrides, and Hydra's choices and config folder; {} for a run started from Python."""
    runtime = ((record or (None, None))[1] or {}).get("runtime") or {}
    folders = [s["path"] for s in runtime.get("config_sources") or [] if s.get("provider") == "main"]
    if not record or not folders:
        return {}
    configs = Path(folders[0].removeprefix("file://"))
    choices = runtime.get("choices") or {}
    dataset = _sets(configs, "dataset", choices.get("dataset", ""), package="dataset.")
    out = dict.fromkeys(dataset, f"dataset {config['dataset']['name']}")
    if choices.get("experiment"):
        out |= dict.fromkeys(_sets(configs, "experiment", choices["experiment"]), f"experiment={choices['experiment']}")
    for override in record[0]:
        key = override.split("=", 1)[0].lstrip("+~").replace("/", ".")
        out[key] = "command line"
    return out


def start_block(config: dict, origin: dict[str, str], *, d: int, steps: int, device, processes: int) -> list[str]:
    """The lines that open a run: one per part of the experiment, each with where its setting came from."""
    t, opt, ds = config["trainer"], config["optimizer"], config["dataset"]
    sizes = config.get("sizes", {})
    optimizer = str(opt.get("_target_", "?")).rsplit(".", 1)[-1]
    step = f"gain {opt['gain']}" if "gain" in opt else f"lr {opt.get('lr')}"
    schedule = str((config.get("scheduler") or {}).get("_target_") or "none").rsplit(".", 1)[-1]
    rows = [
        ("dataset", f"{ds['name']}: K={sizes.get('num_classes')}, {sizes.get('train_samples')} train / "
                    f"{sizes.get('test_samples')} test samples", ("dataset",)),
        ("backbone", f"{config['backbone']['name']} (feature dimension d={d})", ("backbone", "backbone.name")),
        ("head", f"{config['head']['name']} (tau {config['head'].get('tau')})", ("head", "head.name", "head.tau")),
        ("loss", config["loss"]["name"], ("loss", "loss.name")),
        ("optimiser", f"{optimizer}, {step}, schedule {schedule}", ("optimizer", "optimizer.lr", "optimizer.gain")),
        ("epochs", str(t["max_epochs"]), ("trainer.max_epochs",)),
        ("batch", f"{t['batch_size']} ({steps} steps an epoch)", ("trainer.batch_size",)),
        ("device", f"{device}, precision {t['precision']}, {processes} process(es)",
                   ("trainer.device", "trainer.precision")),
    ]  # fmt: skip
    width = max(len(text) for _, text, _ in rows)
    lines = []
    for label, text, keys in rows:
        came = next((origin[k] for k in keys if k in origin), "")
        lines.append(f"  {label:<10}{text:<{width}}" + (f"   [{came}]" if came else ""))
    return lines


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 12s, 0.8s."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Eta:
    """The run's remaining time, from the mean wall time of the epochs this attempt has run (evaluation and NC
    passes included), timed from the end of its first step: that step carries the one-time costs (memory, kernel
    choices) that would inflate an estimate made after one epoch. None before the first epoch ends."""

    def __init__(self, max_epochs: int, cpu: bool):
        self.max_epochs, self.cpu = max_epochs, cpu
        self.begin(1)

    def begin(self, first_epoch: int) -> None:
        """The attempt's epochs start now, from `first_epoch` (a resumed run's first)."""
        self.first, self.begun, self.start, self.skipped = first_epoch, time.monotonic(), None, 0.0
        self.remaining: float | None = None

    def stepped(self, steps_per_epoch: int) -> None:
        """After each training step; the clock restarts at the attempt's first, unless that is a whole epoch."""
        if self.start is None:
            self.start, self.skipped = (
                (time.monotonic(), 1 / steps_per_epoch) if steps_per_epoch > 1 else (self.begun, 0)
            )

    def update(self, epoch: int) -> float:
        """After epoch `epoch` ends: the estimate (s); the first says once when a CPU run will take over an hour."""
        start = self.begun if self.start is None else self.start
        per_epoch = (time.monotonic() - start) / (epoch - self.first + 1 - self.skipped)
        first = self.remaining is None
        self.remaining = per_epoch * (self.max_epochs - epoch)
        if first and self.cpu and self.remaining > LONG_CPU_RUN_S:
            log.warning(
                "this run will take about %s more on the CPU (%s an epoch); for a quick look: %s",
                duration(self.remaining),
                duration(per_epoch),
                QUICK,
            )
        return self.remaining

    def text(self) -> str:
        return "" if self.remaining is None else f"ETA {duration(self.remaining)}"
