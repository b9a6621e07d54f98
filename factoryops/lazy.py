"""A click group whose subcommands are imported only when used (fast ``--help``, light verify)."""

from __future__ import annotations

import importlib

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """Subcommands come from ``targets``: name -> "module:attribute" of a click command."""

    def __init__(self, *args: object, targets: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # click.Group's own keyword arguments pass through untyped
        self.targets = targets

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.targets)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.targets.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command
