"""Click groups whose sub-commands are imported when first named.

``lanalyze flows top`` must not pay for importing the mail server, the web console or the
flow collector: a group lists its sub-commands by name and module (``"pkg.mod:attr"``) and
imports a module only when one of its commands is looked up (``--help`` of the group looks
them all up, to show their one-line help).

``commands`` stays a mapping, as click and our tests expect: its keys are every name, and
reading a value imports it. A hook (``on_load``) lets :mod:`lanalyze.cli` give each command
``--config`` at the moment it is loaded instead of walking the whole tree at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import click


class LazyCommands(MutableMapping[str, click.Command]):
    """Loaded commands, plus ``name -> "module:attribute"`` for those not imported yet."""

    def __init__(self, lazy: dict[str, str]) -> None:
        self._loaded: dict[str, click.Command] = {}
        self._lazy = dict(lazy)
        self.on_load: Callable[[click.Command], None] | None = None

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            spec = self._lazy[name]  # KeyError for an unknown name, as a dict would
            module, _, attribute = spec.partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{spec} is not a click command")  # our bug, not the user's
            self._loaded[name] = command
            if self.on_load is not None:
                self.on_load(command)
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._lazy.pop(name, None)
        self._loaded[name] = command
        if self.on_load is not None:
            self.on_load(command)

    def __delitem__(self, name: str) -> None:
        found = name in self._loaded or name in self._lazy
        self._loaded.pop(name, None)
        self._lazy.pop(name, None)
        if not found:
            raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        yield from self._loaded
        yield from (name for name in self._lazy if name not in self._loaded)

    def __len__(self) -> int:
        return len(self._loaded.keys() | self._lazy.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in self._lazy

    def loaded(self) -> list[click.Command]:
        """The commands imported so far (walking these imports nothing)."""
        return list(self._loaded.values())


class LazyGroup(click.Group):
    """A :class:`click.Group` taking ``lazy={"name": "module:attribute"}``."""

    commands: LazyCommands

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        commands = LazyCommands(lazy or {})
        for name, command in self.commands.items():
            commands[name] = command
        self.commands = commands

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.commands.get(cmd_name)
