"""One registry style for everything a config group names (timm's decorator registry with a lister).

BACKBONES = Registry("backbone")

@BACKBONES.register("resnet18")
def resnet18(...): ...

BACKBONES.names()        # sorted names, for messages and parity tests
BACKBONES.get("resnet18")
BACKBONES.build("resnet18", in_shape, None, width=64)   # options checked, one wording for every group
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from .errors import EtfTrainError


class Registry:
    """Entries (builders or classes) keyed by their config name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator adding an entry under `name`; the entry is returned unchanged."""

        def decorate(entry: Any) -> Any:
            self.add(name, entry)
            return entry

        return decorate

    def add(self, name: str, entry: Any) -> None:
        if name in self._entries:
            raise EtfTrainError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise EtfTrainError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    __getitem__ = get

    def build(self, name: str, /, *args: Any, **options: Any) -> Any:
        """entry(*args, **options), the options first checked against the keyword parameters the entry has left after
        `args`: an unknown option is one line worded alike in every config group. (name is positional-only: the
        timm backbone has an option called name.)"""
        entry = self.get(name)
        params = list(inspect.signature(entry).parameters.values())[len(args) :]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise EtfTrainError(
                    f"{self.kind} {name}: unknown option(s) {', '.join(unknown)}; its options are: "
                    f"{', '.join(accepted) or 'none'}"
                )
        return entry(*args, **options)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
