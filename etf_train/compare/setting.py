"""What was compared, in words: the setting the runs share (for the report's header and the figure's title), the
command that reproduces them, and group labels a reader can read."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import yaml

from .. import rundir
from .runs import RecordedRun, config_text

# how the labels' optimiser names and option keys read
OPTIMIZERS = {"sgd": "SGD", "agd": "AGD", "adamw": "AdamW", "adam": "Adam"}
OPTION_WORDS = {"effective_depth": "depth", "depth": "depth", "lr": "lr", "gain": "gain", "tau": "tau"}
DATASETS = {"ufm": "UFM"}


def rounded(value: str) -> str:
    """`14.686165375401004` -> `14.69`: a sampled value at 4 significant digits; anything else as it is."""
    try:
        return f"{float(value):.4g}" if "." in value and len(value) > 6 else value
    except ValueError:
        return value


def readable(label: str) -> str:
    """`head=nearest_etf, optimizer=agd, optimizer.effective_depth=2` -> `nearest_etf, AGD, depth 2`;
    `head=learned, head.tau=20` -> `learned, tau 20`; other keys as `key value`."""
    parts = []
    for pair in label.split(", "):
        key, _, value = pair.partition("=")
        value = rounded(value)
        if key == "head":
            parts.append(value)
        elif key == "optimizer":
            parts.append(OPTIMIZERS.get(value, value))
        elif key.startswith(("head.", "optimizer.")):
            option = key.split(".", 1)[1]
            parts.append(f"{OPTION_WORDS.get(option, option)} {value}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def _values(runs: Sequence[RecordedRun], key: str) -> list[str]:
    """The distinct values of a config key over the runs, in order of first appearance (`-` for a missing key)."""
    return list(dict.fromkeys(config_text(r, key) for r in runs))


def _one(runs: Sequence[RecordedRun], key: str) -> str:
    """The runs' value of a key, or `a / b` where they differ (the group labels then say which is which)."""
    return " / ".join(dict.fromkeys(map(rounded, _values(runs, key))))


def _seeds(runs: Sequence[RecordedRun]) -> str:
    seeds = sorted({int(s) for s in _values(runs, "seed") if s.lstrip("-").isdigit()})
    if not seeds:
        return "seed not recorded"
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _optimiser(runs: Sequence[RecordedRun]) -> str:
    names = [
        OPTIMIZERS.get(v.rsplit(".", 1)[-1].lower(), v.rsplit(".", 1)[-1]) for v in _values(runs, "optimizer._target_")
    ]
    parts = []
    for key, word in (("optimizer.lr", "lr"), ("optimizer.gain", "gain"), ("optimizer.effective_depth", "depth")):
        if any(v != "-" for v in _values(runs, key)):
            parts.append(f"{word} {_one(runs, key)}")
    return " / ".join(names) + (f" ({', '.join(parts)})" if parts else "")


def _schedule(runs: Sequence[RecordedRun]) -> str:
    names = [v.rsplit(".", 1)[-1] if v != "-" else "none" for v in _values(runs, "scheduler._target_")]
    return "schedule " + " / ".join(
        dict.fromkeys(n.replace("AnnealingLR", "").replace("LR", "").lower() for n in names)
    )


def _dataset(runs: Sequence[RecordedRun], with_train_size: bool = True) -> str:
    """`UFM, K=10, 1,000 train samples` (the sizes where the record holds them)."""
    dataset = _one(runs, "dataset.name")
    sizes = [f"K={_one(runs, 'sizes.num_classes')}"] if _values(runs, "sizes.num_classes") != ["-"] else []
    if with_train_size and _values(runs, "sizes.train_samples") != ["-"]:
        sizes.append(
            f"{' / '.join(f'{int(v):,}' if v.isdigit() else v for v in _values(runs, 'sizes.train_samples'))} "
            "train samples"
        )
    return ", ".join([DATASETS.get(dataset, dataset)] + sizes)


def _epochs(runs: Sequence[RecordedRun]) -> str:
    if _values(runs, "trainer.max_epochs") != ["-"]:
        return f"{_one(runs, 'trainer.max_epochs')} epochs"
    return f"{'/'.join(map(str, sorted({r.epochs for r in runs})))} epochs"


def headline(groups: dict[str, list[RecordedRun]]) -> str:
    """The figure's title: `UFM, K=10, d=512 · AGD (gain 10, depth 2) · 200 epochs · 3 seeds per group`."""
    runs = [r for rs in groups.values() for r in rs]
    d = f", d={_one(runs, 'sizes.feature_dim')}" if _values(runs, "sizes.feature_dim") != ["-"] else ""
    counts = sorted({len(rs) for rs in groups.values()})
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return " · ".join(
        [
            f"{_dataset(runs, False)}{d}",
            f"backbone {_one(runs, 'backbone.name')}",
            _optimiser(runs),
            _epochs(runs),
            f"{n} seed{'s' * (n != '1')} per group",
        ]
    )


def setting(runs: Sequence[RecordedRun]) -> str:
    """One line: `UFM (ufm), K=10, 1,000 train samples · backbone ufm, d=512 · loss ce · AGD (gain 10, depth 2) ·
    schedule none · 200 epochs, batch 256, 4 steps an epoch · seeds 1-3 · etf-train 0.1.0+g1234abc`; `a / b` where runs
    differ."""
    backbone = f"backbone {_one(runs, 'backbone.name')}"
    if _values(runs, "sizes.feature_dim") != ["-"]:
        backbone += f", d={_one(runs, 'sizes.feature_dim')}"
    epochs = _epochs(runs)
    if _values(runs, "trainer.batch_size") != ["-"]:
        epochs += f", batch {_one(runs, 'trainer.batch_size')}"
    if _values(runs, "sizes.steps_per_epoch") != ["-"]:
        epochs += f", {_one(runs, 'sizes.steps_per_epoch')} steps an epoch"
    return " · ".join(
        [
            _dataset(runs),
            backbone,
            f"loss {_one(runs, 'loss.name')}",
            _optimiser(runs),
            _schedule(runs),
            epochs,
            _seeds(runs),
            "etf-train version not recorded"
            if _values(runs, "code_version") == ["-"]
            else f"etf-train {_one(runs, 'code_version')}",
        ]
    )


def reproduce(runs: Sequence[RecordedRun]) -> str | None:
    """The command that makes these runs again: a sweep's own command line (its multirun.yaml), else every run's
    overrides (.hydra/overrides.yaml), each key with the values the runs took, less an Optuna search's sampled keys
    (its optimization_results.yaml names them); None when no run recorded its overrides."""
    sweeps = {r.path.parent for r in runs}
    sweep = next(iter(sweeps)) if len(sweeps) == 1 else None
    sampled: set[str] = set()
    if sweep is not None:
        saved = _yaml(sweep / "multirun.yaml")
        task = ((saved or {}).get("hydra") or {}).get("overrides", {}).get("task") if isinstance(saved, dict) else None
        if task:
            return " ".join(
                ["etf-train", "-m", *(shlex.quote(str(t)) for t in task if not str(t).startswith("hydra."))]
            )
        results = _yaml(sweep / "optimization_results.yaml")
        sampled = set((results or {}).get("best_params") or {}) if isinstance(results, dict) else set()
    values: dict[str, list[str]] = {}
    found = False
    for run in runs:
        overrides = _yaml(run.path / rundir.OVERRIDES)
        if overrides is None:
            continue
        found = True
        for item in overrides or []:
            key, _, value = str(item).partition("=")
            if not key.lstrip("+~").startswith("hydra.") and key not in sampled:
                values.setdefault(key, [])
                if value not in values[key]:
                    values[key].append(value)
    if not found:
        return None
    tokens = [shlex.quote(f"{key}={','.join(v)}") for key, v in values.items()]
    return " ".join(["etf-train", "-m", *tokens])


def _yaml(path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
