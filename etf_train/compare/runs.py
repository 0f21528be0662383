"""Finding, loading and grouping runs for etf-compare (the run-folder contract is rundir.py)."""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from .. import rundir
from ..errors import EtfTrainError
from ..rundir import Curve
from .events import listed, own_events

GROUP_ALIASES = {"head": "head.name"}
LABEL_KEY = re.compile(r"(?:^|, )([\w./]+)=")  # the keys a group label `head=learned, head.bias=False` shows


@dataclass(frozen=True)
class RecordedRun:
    """A finished (or unfinished) run as its folder records it: config, scalars, state (training's Run is the live
    one)."""

    path: Path
    config: DictConfig
    scalars: dict[str, Curve]
    state: rundir.RunState
    head_choice: str | None = None  # the head config that made it (learned_authors); None: not in the record
    events: tuple[Path, ...] = ()  # the event files its scalars come from (another run's file left out)

    @property
    def epochs(self) -> int:
        """The last epoch it logged (0: none)."""
        return max((int(steps[-1]) for steps, _ in self.scalars.values() if len(steps)), default=0)

    @property
    def max_epochs(self) -> int | None:
        of = OmegaConf.select(self.config, "trainer.max_epochs", default=None)
        return of if isinstance(of, int) else None

    @property
    def first_epoch(self) -> int:
        """The first epoch it logged (0: none); above 1 for a run continued from another run's checkpoint."""
        return min((int(steps[0]) for steps, _ in self.scalars.values() if len(steps)), default=0)

    @property
    def short(self) -> bool:
        """Marked finished but logged fewer epochs than it was to train (e.g. events lost, or a marker left by an
        earlier attempt): its finals would be another epoch's."""
        return self.state.status == "finished" and self.max_epochs is not None and self.epochs < self.max_epochs

    @property
    def counted(self) -> bool:
        return self.state.status == "finished" and not self.short

    def included(self, include_unfinished: bool) -> bool:
        """Whether the table and figure use it: finished, or with include_unfinished any run that logged an epoch."""
        return self.counted or (include_unfinished and self.epochs > 0)

    def describe(self) -> str:
        """`path: unfinished at epoch 3 of 6` / `path: failed at epoch 1 (reason)`."""
        of = self.max_epochs
        where = f"at epoch {self.epochs}" + (f" of {of}" if of is not None else "")
        if self.short:
            return f"{self.path}: marked finished, but its events end {where}"
        reason = f" ({self.state.detail})" if self.state.detail else ""
        return f"{self.path}: {self.state.status} {where}{reason}"


def warn(message: str) -> None:
    print(f"etf-compare: warning: {message}", file=sys.stderr)


def find_runs(folder: Path) -> list[Path]:
    """Run folders under `folder` (itself included), sorted."""
    if not folder.is_dir():
        raise EtfTrainError(f"{'not a folder' if folder.exists() else 'folder does not exist'}: {folder}")
    runs = [config.parent.parent for config in sorted(folder.rglob(str(rundir.CONFIG)))]
    if not runs:
        raise EtfTrainError(f"no runs under {folder}: a run is a directory holding {rundir.CONFIG}")
    return runs


def load_run(run_dir: Path) -> RecordedRun:
    config_path = run_dir / rundir.CONFIG
    try:
        config = OmegaConf.load(config_path)
    except Exception as e:  # yaml and OmegaConf raise many types; all mean "unreadable config"
        raise EtfTrainError(f"cannot read {config_path}: {str(e).splitlines()[0]}") from e
    if not isinstance(config, DictConfig):
        raise EtfTrainError(f"{config_path} is not a mapping")
    record = rundir.migrate(OmegaConf.to_container(config, resolve=False))
    own, others = own_events(run_dir, record)
    for events, why in others.items():
        warn(f"{events}: an event file of another run ({why}); left out of the curves of {run_dir}")
    return RecordedRun(
        run_dir,
        OmegaConf.create(record),
        rundir.read_scalars(run_dir, own),
        rundir.state(run_dir),
        _head_choice(run_dir),
        tuple(own),
    )


def _head_choice(run_dir: Path) -> str | None:
    """Hydra's choice of the head group (`head=learned_authors`), from the record's hydra.yaml: a preset's runs
    have the plain head.name of the head it is built on."""
    try:
        hydra = yaml.safe_load((run_dir / rundir.HYDRA).read_text())
        choice = hydra["hydra"]["runtime"]["choices"]["head"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return choice if isinstance(choice, str) else None


def load_runs(folders: Sequence[Path]) -> list[RecordedRun]:
    seen: dict[Path, Path] = {}  # resolved -> as found; overlapping folders give each run once
    for folder in folders:
        for run_dir in find_runs(folder):
            seen.setdefault(run_dir.resolve(), run_dir)
    return [load_run(run_dir) for run_dir in seen.values()]


_MISSING = object()


def config_value(run: RecordedRun, key: str) -> object:
    """The value at a dotted config key, or _MISSING."""
    try:
        value = OmegaConf.select(run.config, key, default=_MISSING)
    except Exception as e:  # an interpolation that only resolves inside Hydra
        raise EtfTrainError(f"run {run.path}: cannot resolve config key '{key}': {e}") from e
    if isinstance(value, (DictConfig, ListConfig)):
        raise EtfTrainError(f"config key '{key}' of run {run.path} is a section, not a value; group by one of its keys")
    return value


def plain(value: object) -> object:
    """A number as one spelling: 5 and 5.0 (a yaml default against a command-line override) are one setting."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def config_text(run: RecordedRun, key: str) -> str:
    """The value at a dotted config key as text, `-` where the run lacks it."""
    value = config_value(run, key)
    return "-" if value is _MISSING else str(value)


def _variants(
    runs: Sequence[RecordedRun], node: str, identity: str, exclude: Sequence[str]
) -> dict[int, tuple[str, list]]:
    """Per run: its `node.identity` value and the (`node.<option>`, value) pairs of the options that differ among
    the runs sharing that value (options named in `exclude`, or starting with `_`, left out)."""

    def flat(value: object) -> dict[str, object]:
        return rundir.flatten(OmegaConf.to_container(value, resolve=False)) if OmegaConf.is_config(value) else {}

    options = {id(r): flat(r.config.get(node)) for r in runs}
    by_identity: dict[str, list[RecordedRun]] = {}
    for r in runs:
        by_identity.setdefault(str(options[id(r)].get(identity, "-")), []).append(r)
    out = {}
    for name, same in by_identity.items():
        keys = sorted({k for r in same for k in options[id(r)] if k != identity and not k.startswith("_")})
        differ = [
            k
            for k in keys
            if len({repr(plain(options[id(r)].get(k))) for r in same}) > 1 and f"{node}.{k}" not in exclude
        ]
        for r in same:
            out[id(r)] = (name, [(f"{node}.{k}", plain(options[id(r)].get(k))) for k in differ])
    return out


def head_variants(runs: Sequence[RecordedRun], exclude: Sequence[str] = ()) -> dict[int, list[tuple[str, object]]]:
    """For each run, the head options that tell it apart from other runs of the same head, as (`head.<option>`,
    value) pairs: none for a head whose runs agree, `head.bias=False` beside `head.bias=True` runs, so that a preset
    such as head=learned_authors never pools with the head it is built on."""
    return {k: pairs for k, (_, pairs) in _variants(runs, "head", "name", exclude).items()}


def optimizer_variants(runs: Sequence[RecordedRun], exclude: Sequence[str] = ()) -> dict[int, list[tuple[str, object]]]:
    """For each run, what tells its optimiser apart from the other runs': `optimizer=agd` when the runs use several
    optimisers, then the options that differ among runs of one optimiser (`optimizer.depth=2`). Which head converges
    faster depends on the optimiser (docs/results.md), so a group never pools two and its label names the one it has."""
    found = _variants(runs, "optimizer", "_target_", exclude)
    named = {name for name, _ in found.values()} - {"-"}  # "-": a run without an optimizer node (not etf-train's)
    several = len(named) > 1 and not {"optimizer", "optimizer._target_"} & set(exclude)
    short = {name: name.rsplit(".", 1)[-1].lower() for name in named}
    # two classes of one name (torch.optim.AdamW, timm.optim.AdamW) keep their full paths, or their groups would merge
    shown = {name: name if list(short.values()).count(s) > 1 else s for name, s in short.items()}
    return {
        k: ([("optimizer", shown[name])] if several and name != "-" else []) + pairs
        for k, (name, pairs) in found.items()
    }


def _sort_key(values: Sequence[object]) -> tuple:
    """Numbers numerically, then strings, then missing values."""
    return tuple(
        (2, "") if v is _MISSING else (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))
        for v in values
    )


def group_runs(runs: Sequence[RecordedRun], keys: Sequence[str]) -> dict[str, list[RecordedRun]]:
    """Runs by their values of `keys`, labelled `key=value, ...` ('-' where a run lacks a key; the same spelling in
    the table, CSV and legend) in sorted value order. `head` stands for head.name, followed by the head options that
    tell runs of one head apart (head_variants): `head=learned, head.bias=False`, a preset by its name
    (`head=learned_authors`); runs of different optimisers or optimiser options are always told apart
    (optimizer_variants): `head=learned, optimizer=agd`. Numbers are grouped by value (5 with 5.0)."""
    for key in keys:
        if all(config_value(run, GROUP_ALIASES.get(key, key)) is _MISSING for run in runs):
            raise EtfTrainError(f"no run has config key '{GROUP_ALIASES.get(key, key)}' (from --group-by)")
    variants = head_variants(runs, exclude=keys) if "head" in keys else {}
    optimizers = optimizer_variants(runs, exclude=keys)

    def pairs(run: RecordedRun) -> list[tuple[str, object]]:
        out = []
        for key in keys:
            value = plain(config_value(run, GROUP_ALIASES.get(key, key)))
            if key == "head" and value is not _MISSING:  # a preset by its own name: head=learned_authors
                out += [(key, run.head_choice or value)] + variants[id(run)]
            else:
                out.append((key, value))
        return out + optimizers[id(run)]

    by_run = {id(run): pairs(run) for run in runs}
    groups: dict[str, list[RecordedRun]] = {}
    for run in sorted(runs, key=lambda r: (_sort_key([v for _, v in by_run[id(r)]]), str(r.path))):
        label = ", ".join(f"{k}={'-' if v is _MISSING else v}" for k, v in by_run[id(run)])
        groups.setdefault(label, []).append(run)
    return groups


def check_datasets(runs: Sequence[RecordedRun]) -> None:
    """Refuse to compare runs of different `dataset.name`."""
    by_name: dict[str, list[RecordedRun]] = {}
    for run in runs:
        by_name.setdefault(config_text(run, "dataset.name"), []).append(run)
    if len(by_name) > 1:
        parts = ", ".join(
            f"{n} ({len(rs)} run{'s' * (len(rs) > 1)}, e.g. {rs[0].path})" for n, rs in sorted(by_name.items())
        )
        raise EtfTrainError(f"runs mix datasets: {parts}; compare one dataset at a time or pass --allow-mixed")


def pooled_settings(groups: dict[str, list[RecordedRun]]) -> list[str]:
    """Messages for groups whose median "over seeds" would pool more than seeds: runs that differ in a setting
    that can change results (any key but `seed` and the neutral ones of rundir.NEUTRAL), or one run given twice."""
    messages = []
    for label, runs in groups.items():
        configs = [OmegaConf.to_container(r.config, resolve=False) for r in runs]
        for run, config in zip(runs[1:], configs[1:]):
            diff = [c for c in rundir.changed_settings(configs[0], config) if not c.startswith("seed:")]
            if diff:
                messages.append(
                    f"group '{label}' pools runs with other settings than the seed ({runs[0].path} vs "
                    f"{run.path}: {listed(diff)}); add such keys to --group-by"
                )
                break
        seen: dict[object, RecordedRun] = {}
        for run in runs:
            seed = config_value(run, "seed")
            if seed is not _MISSING and seed in seen:
                messages.append(
                    f"group '{label}' holds seed {seed} twice ({seen[seed].path}, {run.path}): "
                    "the same run given twice?"
                )
            seen.setdefault(seed, run)
    return messages


def unlike_groups(groups: dict[str, list[RecordedRun]], keys: Sequence[str]) -> list[str]:
    """Messages for groups that differ in more than their labels name: a setting that can change results other
    than the seed, the --group-by keys themselves and the nodes whose differing options the labels name (head, when
    grouped by head; the optimiser), e.g. K = 10 against K = 100, 20 epochs against 100, or metrics every epoch
    against every 5 (threshold epochs as coarse)."""
    exact = {GROUP_ALIASES.get(k, k) for k in keys}  # a key groups by itself, not by its whole section
    nodes = {"optimizer", "seed"}  # the labels name the optimiser and its differing options

    def labelled(key: str, shown: set[str]) -> bool:
        # head options the labels do not show (tau of one head against another's) are differences like any other
        return key in exact or key.split(".")[0] in nodes or key in shown

    firsts = [(label, rs[0]) for label, rs in groups.items() if rs]
    if not firsts:
        return []
    (base_label, base), messages = firsts[0], []
    base_config = OmegaConf.to_container(base.config, resolve=False)
    for label, run in firsts[1:]:
        config = OmegaConf.to_container(run.config, resolve=False)
        shown = set(LABEL_KEY.findall(base_label)) | set(LABEL_KEY.findall(label))
        diff = [c for c in rundir.changed_settings(base_config, config) if not labelled(c.split(":", 1)[0], shown)]
        if diff:
            messages.append(
                f"groups '{base_label}' and '{label}' differ in more than their labels ({base.path} vs "
                f"{run.path}: {listed(diff)}); compare runs of one setting, or add such keys to --group-by"
            )
    return messages


def code_versions(groups: dict[str, list[RecordedRun]]) -> list[str]:
    """A message when the runs come from several versions of etf-train: a fix between them can move their numbers."""
    by_version = Counter(config_text(run, "code_version") for rs in groups.values() for run in rs)
    if len(by_version) < 2:
        return []
    parts = ", ".join(
        f"{'not recorded' if v == '-' else v}: {n} run{'s' * (n != 1)}" for v, n in sorted(by_version.items())
    )
    return [
        f"the runs come from {len(by_version)} versions of etf-train ({parts}); a fix between them can move "
        "their numbers (docs/reliability.md lists what each fix changed)"
    ]


def late_starts(groups: dict[str, list[RecordedRun]]) -> list[str]:
    """Messages for runs whose events begin after epoch 1 (continued from another run's checkpoint into a new
    folder): a threshold they met before their first logged epoch reads as that epoch or later."""
    return [
        f"{run.path} logged epochs {run.first_epoch}-{run.epochs} only (continued from another run's checkpoint?): "
        f"a threshold it met before epoch {run.first_epoch} reads as epoch {run.first_epoch} or later"
        for runs in groups.values()
        for run in runs
        if run.first_epoch > 1
    ]
