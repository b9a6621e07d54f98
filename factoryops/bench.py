"""``factoryops bench``: mounts each benchmark module's click command.

A benchmark module in ``benchmarks/`` exposes ``command`` (a click command); it prints
a rich table and, as its very last line, one JSON object of figures.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["BENCHMARKS", "bench"]

# subcommand -> module in benchmarks/ holding `command`
BENCHMARKS: dict[str, str] = {
    "pipeline": "benchmarks.pipeline",
}


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(BENCHMARKS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = BENCHMARKS.get(cmd_name)
        if module is None:
            return None
        command = importlib.import_module(module).command
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}.command is not a click command")
        return command


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Measure speed against a baseline run in the same process.

    \b
    Example:
      factoryops bench pipeline --readings 200000
    """
