"""The etf-train command line, read once: its flags (-m, --cfg job, ...) and its key=value overrides, in Hydra's
override grammar (`+key=value` adds a key, `++key=value` forces it, `~key` deletes it). Every decision cli.py takes
before Hydra starts reads one Command; cli.main hands Hydra the final argument list once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException


def is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


@dataclass(frozen=True)
class Command:
    args: tuple[str, ...]

    @property
    def overrides(self) -> list[str]:
        """The `key=value` arguments, as given (flags such as -m and --cfg job left out)."""
        return [a for a in self.args if is_override(a)]

    @cached_property
    def given(self) -> dict[str, str]:
        """key -> value of every override, the `+` and `++` prefixes stripped (a repeated key: its last value)."""
        return {key.lstrip("+"): value for key, _, value in (o.partition("=") for o in self.overrides)}

    def value(self, key: str, default: str | None = None) -> str | None:
        return self.given.get(key, default)

    @property
    def multirun(self) -> bool:
        """-m, or a config that sets hydra.mode=MULTIRUN itself (every hparams_search file: an Optuna search)."""
        return (
            any(a in ("-m", "--multirun") for a in self.args)
            or self.value("hydra.mode") == "MULTIRUN"
            or self.value("hparams_search", "null") != "null"
        )

    @property
    def output_key(self) -> str:
        """The setting that names this command's output folder."""
        return "hydra.sweep.dir" if self.multirun else "hydra.run.dir"

    def with_override(self, override: str) -> Command:
        """This command plus one override, put before the others: Hydra's argparse takes the overrides as one run of
        positional arguments, so one appended after a flag such as `--cfg job` would be refused."""
        first = next((i for i, a in enumerate(self.args) if is_override(a)), len(self.args))
        return Command((*self.args[:first], override, *self.args[first:]))

    @cached_property
    def parsed(self) -> list[Override] | None:
        """The overrides as Hydra parses them; None when they do not parse (Hydra then says why itself)."""
        try:
            return OverridesParser.create().parse_overrides(self.overrides)
        except HydraException:
            return None

    @property
    def task(self) -> list[str]:
        """The overrides Hydra files as the task's (hydra.overrides.task), sorted: all but Hydra's own, hydra.* keys
        and group choices such as hydra/launcher=joblib, so that the same command finds its interrupted run or sweep."""
        if self.parsed is None:
            return sorted(o for o in self.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/")))
        return sorted(o.input_line for o in self.parsed if not o.is_hydra_override())
