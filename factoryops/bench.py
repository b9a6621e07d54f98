"""``factoryops bench``: mounts each benchmark module's click command.

A benchmark module in ``benchmarks/`` exposes a click command; it prints
a rich table and, as its very last line, one JSON object of figures.
"""

from __future__ import annotations

import click

from factoryops.lazy import LazyGroup

__all__ = ["BENCHMARKS", "bench"]

# subcommand -> "module:attribute" of its click command
BENCHMARKS: dict[str, str] = {
    "pipeline": "benchmarks.pipeline:command",
    "sign": "benchmarks.sign:command",
    "inference": "benchmarks.inference:command",
    "modbus": "benchmarks.modbus:command",
    "crash": "benchmarks.crash:command",
    "verify": "benchmarks.verify:command",
    "hub": "benchmarks.hub:command",
    "fleet": "benchmarks.fleet:command",
    "m2n2": "benchmarks.m2n2:command",
    "spool": "benchmarks.spool:command",
}


@click.group(cls=LazyGroup, targets=BENCHMARKS)
def bench() -> None:
    """Measure speed against a baseline run in the same process.

    \b
    Example:
      factoryops bench pipeline --readings 200000
    """
