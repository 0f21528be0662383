"""The Optuna preset's search space (`hparams_search=optuna`), chosen before Hydra starts: it follows the optimiser,
and a key the config lacks is refused in one line.

Without search overrides of the user's own, the search is over the optimiser's step, log-uniform over a decade on
either side of its configured value (AGD: `optimizer.gain`, 1-100 around 10; SGD and AdamW: `optimizer.lr`, so
0.005-0.5 around the image models' 0.05 and 0.5-50 around UFM's 5), and `head.tau` on [1, 20]. With search
overrides (`'head.tau=interval(1, 20)'`) exactly those keys are searched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from .command import Command
from .errors import EtfTrainError

STEP_KEYS = ("gain", "lr")  # AGD's step is its gain; SGD's and AdamW's their lr
TAU = "head.tau=interval(1.0, 20.0)"


def is_search(cmd: Command) -> bool:
    return cmd.value("hparams_search", "null") not in ("null", "")


def check(cmd: Command, configs: Path) -> str | None:
    """The error line for a search that cannot run as asked, or None: an Optuna storage under the preset's study
    name (Optuna loads a stored study by name, so a second search, of another experiment, would join the first and
    its best trial could be the first's), or a searched key the config lacks (Hydra's own message advises `+key`)."""
    if cmd.value("hydra.sweeper.storage", "null") not in ("null", "") and "hydra.sweeper.study_name" not in cmd.given:
        return (
            "hydra.sweeper.storage keeps studies by name, and a search under the preset's name would join any "
            "other search stored there: give this one its own hydra.sweeper.study_name=..."
        )
    try:
        search_overrides(cmd.overrides, configs)
    except EtfTrainError as e:
        return str(e)
    return None


def search_overrides(overrides: Sequence[str], configs: Path) -> list[str]:
    """The search overrides to add to a search's command line (none when it names its own); an EtfTrainError for a
    searched key that the config composed from `configs` (etf-train's config folder) does not have."""
    return list(_space(tuple(overrides), configs))


@functools.cache
def _space(overrides: tuple[str, ...], configs: Path) -> tuple[str, ...]:
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_hydra_override()]
    searched = [o for o in parsed if o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[o.input_line for o in parsed if not o.is_sweep_override()])
    optimizer = cfg.get("optimizer") or {}
    step = next((k for k in STEP_KEYS if k in optimizer), None)
    for o in searched:
        key = o.key_or_group
        if not o.is_add() and OmegaConf.select(cfg, key, default=None) is None and key not in _groups(cfg):
            name = str(optimizer.get("_target_", "")).rsplit(".", 1)[-1].lower()
            hint = f" (optimizer={name} steps by optimizer.{step})" if key.startswith("optimizer.") and step else ""
            raise EtfTrainError(
                f"the search names {key}, which this config has no key for{hint}: search a key it has, "
                f"or add one with '+{o.input_line}'"
            )
    if searched:
        return ()
    space = [TAU] if "tau" in (cfg.get("head") or {}) else []
    if step is not None:
        v = float(optimizer[step])
        space.insert(0, f"optimizer.{step}=tag(log, interval({v / 10:g}, {v * 10:g}))")
    return tuple(space)


def _groups(cfg) -> set[str]:
    """Config groups a search may choose among (`optimizer=choice(sgd, adamw)`): the config's top-level nodes."""
    return set(cfg.keys())


def objective(scalars: dict[str, float], metric: str | None) -> float | None:
    """What a trial returns to the sweeper: the last epoch's value of `optimized_metric` (None when unset)."""
    if metric is None:
        return None
    if metric not in scalars:
        raise EtfTrainError(
            f"optimized_metric={metric} is not a scalar of this run; choose one of {', '.join(sorted(scalars))}"
        )
    return float(scalars[metric])


def round_dirname(name: str) -> str:
    """A trial folder's name with its sampled floats at 4 significant digits: `head.tau=14.69,optimizer.lr=0.01235`
    (Optuna samples 14.686165375401004)."""
    return re.sub(r"(?<==)-?\d+\.\d{5,}(?:e-?\d+)?", lambda m: f"{float(m.group()):.4g}", name)
