"""``factoryops sim``: serve the SIMULATED pump plant (or a SKAB replay) over Modbus TCP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click

from hil_tests.modbus_server import PLANT_REGISTER_MAP, PlantServer

__all__ = ["sim"]


@click.group()
def sim() -> None:
    """Simulated plants for demos, tests and HIL rigs (simulations, not real equipment)."""


@sim.command()
@click.option("--modbus-port", type=int, default=5020, show_default=True)
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve a SKAB-format CSV (looping) instead of the model.",
)
@click.option(
    "--speed",
    type=float,
    default=1.0,
    show_default=True,
    help="Plant seconds per wall-clock second.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration", type=float, default=None, help="Stop after S seconds.")
def plant(
    modbus_port: int, replay: Path | None, speed: float, seed: int, duration: float | None
) -> None:
    """Serve the pump plant on 127.0.0.1 until Ctrl-C; prints the register map.

    \b
    Examples:
      factoryops sim plant --modbus-port 5020
      factoryops sim plant --replay ../shared/datasets/skab/valve1/0.csv
    """
    asyncio.run(_serve(modbus_port, replay, speed, seed, duration))


async def _serve(
    port: int, replay: Path | None, speed: float, seed: int, duration: float | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with PlantServer(modbus_port=port, replay=replay, speed=speed, seed=seed) as srv:
        source = f"replaying {replay}" if replay else f"pump model, seed {seed}, x{speed}"
        click.echo(f"Modbus TCP on 127.0.0.1:{srv.port} (device id 1) — {source}")
        for s in PLANT_REGISTER_MAP:
            click.echo(
                f"  {s.table:<8} {s.address:>3}  {s.type:<8} {s.word_order:<6} "
                f"x{s.scale:<6} {s.offset:+7.1f}  {s.signal} [{s.unit}]"
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()


@sim.command()
@click.option("--seconds", type=float, default=600, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def dataset(seconds: float, seed: int, out: Path) -> None:
    """Write fault-free simulated operation as a SKAB-format CSV (for training models).

    \b
    Example:
      factoryops sim dataset --seconds 600 --out normal.csv
    """
    from hil_tests.training import write_skab_csv  # noqa: PLC0415

    n = write_skab_csv(out, seconds, seed=seed)
    click.echo(f"{out}: {n} rows of simulated normal operation (seed {seed})")
