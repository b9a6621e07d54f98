"""``factoryops bench modbus``: span merging vs one request per tag, and a dead slave's effect.

Against a pymodbus server on loopback serving SIMULATED devices: 20 devices x 100 scattered
float32 tags. (1) tags/s read with merged spans vs a read per tag, same devices, same run;
(2) polls/s of the healthy devices with and without one silent (dead) slave among them;
(3) Modbus RTU requests/s over a socat pty pair to a pymodbus serial server (a pty does not
pace bytes at the baud rate, so this is the software's ceiling; the line's own bound at the
configured baud rate is printed beside it); (4) end to end (``benchmarks/endtoend.py``): tags/s
from the read to a committed signed window in the spool, the agent pinned to one core and the
server to the other, and the agent's RSS with the demo's int8 twin loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType
from rich.console import Console
from rich.table import Table

from agent.config import ModbusDeviceConfig, ModbusTag
from agent.connectors.base import Sample, SourceGap
from agent.connectors.modbus import ModbusConnector, Span, one_request_per_tag, plan_spans
from attestation.localports import free_port
from benchmarks.endtoend import end_to_end
from hil_tests.tasks import TcpServer, stop_all

__all__ = ["FleetServer", "SilentPeer", "command", "healthy_poll_rates"]


@dataclass
class FleetServer:
    """``n`` SIMULATED Modbus devices (ids 1..n) behind one TCP port on loopback."""

    n: int
    registers: int = 2048
    port: int = 0
    _server: ModbusTcpServer | None = None
    _task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> FleetServer:
        self.port = self.port or free_port()
        devices = [
            SimDevice(
                id=i,
                simdata=(
                    [SimData(0, count=1, datatype=DataType.BITS)],
                    [SimData(0, count=1, datatype=DataType.BITS)],
                    [SimData(0, count=self.registers, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
                ),
            )
            for i in range(1, self.n + 1)
        ]
        self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
        self._task = asyncio.create_task(self._server.serve_forever(), name="fleet-server")
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                await w.wait_closed()
                return self
            await asyncio.sleep(0.02)
        raise RuntimeError(f"fleet server did not start on port {self.port}")

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            with contextlib.suppress(TimeoutError):  # shutdown can hang on a closing client
                async with asyncio.timeout(5):
                    await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus's shutdown() is unannotated
        if self._task is not None:
            await stop_all([self._task])


@dataclass
class SilentPeer:
    """A dead slave: accepts TCP connections and never answers (every read times out)."""

    port: int = 0
    _server: TcpServer | None = None

    async def __aenter__(self) -> SilentPeer:
        self._server = await TcpServer.start(self._swallow, port=self.port)
        self.port = self._server.port
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop()

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        writer.close()


def _tags(rng: random.Random, n: int, spread: int) -> tuple[ModbusTag, ...]:
    """``n`` float32 tags at random even addresses below ``spread`` (a PLC's tag table)."""
    addresses = sorted(rng.sample(range(0, spread - 2, 2), n))
    return tuple(ModbusTag(f"t{a}", a, unit="u") for a in addresses)


async def _read_rate(
    port: int, devices: int, tags: tuple[ModbusTag, ...], seconds: float, plan: Sequence[Span]
) -> tuple[float, int]:
    """Tags per second over ``devices`` concurrent connections, each polling back to back."""

    async def one(device_id: int) -> int:
        cfg = ModbusDeviceConfig(
            name=f"d{device_id}", host="127.0.0.1", port=port, device_id=device_id, tags=tags
        )
        conn = ModbusConnector(cfg)
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        n, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            n += len(await conn.poll_once(client, plan))
        client.close()
        return n

    started = time.monotonic()
    counts = await asyncio.gather(*(one(i) for i in range(1, devices + 1)))
    return sum(counts) / (time.monotonic() - started), len(plan)


async def healthy_poll_rates(
    port: int, devices: int, tags: tuple[ModbusTag, ...], seconds: float, dead_port: int | None
) -> float:
    """Mean polls/s of the healthy devices (100 ms interval), plus one dead slave if given."""
    healthy = [
        ModbusConnector(
            ModbusDeviceConfig(
                name=f"d{i}",
                host="127.0.0.1",
                port=port,
                device_id=i,
                poll_interval_ms=100,
                timeout_ms=500,
                tags=tags,
            )
        )
        for i in range(1, devices + 1)
    ]
    extra = (
        []
        if dead_port is None
        else [
            ModbusConnector(
                ModbusDeviceConfig(
                    name="dead",
                    host="127.0.0.1",
                    port=dead_port,
                    poll_interval_ms=100,
                    timeout_ms=500,
                    tags=tags,
                )
            )
        ]
    )

    async def emit(_: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        return None

    tasks = [asyncio.create_task(c.run(emit)) for c in healthy + extra]
    await asyncio.sleep(0.5)  # connect and settle
    before = [c.polls for c in healthy]
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    after = [c.polls for c in healthy]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return sum(a - b for a, b in zip(after, before, strict=True)) / elapsed / len(healthy)


RTU_BAUD = 115200
RTU_GAP_S = 0.00175  # Modbus over Serial Line v1.02 §2.5.1.1: t3.5 fixed at 1.75 ms > 19200 Bd


def rtu_line_bound(registers: int, baud: int = RTU_BAUD) -> float:
    """Requests/s a real RS-485 line can carry: 11 bits a character, a t3.5 gap per frame."""
    chars = 8 + 5 + 2 * registers  # read request; reply: id, fc, byte count, data, CRC
    return 1 / (chars * 11 / baud + 2 * RTU_GAP_S)


@contextlib.asynccontextmanager
async def _pty_pair() -> Any:
    """Two ptys joined by socat: ``(a, b)`` paths; socat is stopped on exit."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (apt install socat)")
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a", Path(d) / "b"
        proc = subprocess.Popen(  # noqa: ASYNC220 - socat runs for the whole measurement
            [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(10):
                while not (a.exists() and b.exists()):  # noqa: ASYNC110 - socat makes files
                    await asyncio.sleep(0.02)
            yield a, b
        finally:
            proc.terminate()
            proc.wait(timeout=5)


async def rtu_rates(seconds: float) -> dict[str, float]:
    """Requests/s and tags/s of one RTU connector polling back to back over a pty pair."""
    tags = tuple(ModbusTag(f"r{a}", a, unit="u") for a in range(0, 20, 2))  # 10 float32
    async with _pty_pair() as (a, b):
        device = SimDevice(
            id=1,
            simdata=(
                [SimData(0, count=1, datatype=DataType.BITS)],
                [SimData(0, count=1, datatype=DataType.BITS)],
                [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
            ),
        )
        server = ModbusSerialServer([device], framer=FramerType.RTU, port=str(b), baudrate=RTU_BAUD)
        task = asyncio.create_task(server.serve_forever(), name="rtu-server")
        await asyncio.sleep(0.3)
        client = AsyncModbusSerialClient(
            str(a), framer=FramerType.RTU, baudrate=RTU_BAUD, timeout=2, retries=0
        )
        cfg = ModbusDeviceConfig(
            name="rtu", host="", transport="rtu", serial_port=str(a), baudrate=RTU_BAUD, tags=tags
        )
        conn = ModbusConnector(cfg)
        out: dict[str, float] = {}
        try:
            if not await client.connect():
                raise RuntimeError(f"cannot open {a}")
            for label, plan in (
                ("per_tag", one_request_per_tag(tags)),
                ("merged", plan_spans(tags, max_gap=8)),
            ):
                n = requests = 0
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    n += len(await conn.poll_once(client, plan))
                    requests += len(plan)
                elapsed = time.monotonic() - started
                out[f"rtu_requests_per_s_{label}"] = requests / elapsed
                out[f"rtu_tags_per_s_{label}"] = n / elapsed
                out[f"rtu_line_bound_requests_per_s_{label}"] = rtu_line_bound(
                    max(s.count for s in plan), RTU_BAUD
                )
            if conn.errors:
                raise RuntimeError(f"RTU reads failed during the benchmark: {dict(conn.errors)}")
        finally:
            client.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus's shutdown() is unannotated
            await stop_all([task])
    return out


async def _run(
    devices: int, tags_per_device: int, seconds: float, spread: int, max_gap: int, rtu: bool
) -> dict[str, float]:
    rng = random.Random(42)
    async with FleetServer(devices) as fleet, SilentPeer() as dead:
        tags = _tags(rng, tags_per_device, spread)
        merged_rate, merged_reqs = await _read_rate(
            fleet.port, devices, tags, seconds, plan_spans(tags, max_gap=max_gap)
        )
        naive_rate, naive_reqs = await _read_rate(
            fleet.port, devices, tags, seconds, one_request_per_tag(tags)
        )
        without = await healthy_poll_rates(fleet.port, devices, tags, seconds, None)
        with_dead = await healthy_poll_rates(fleet.port, devices, tags, seconds, dead.port)
    serial = await rtu_rates(seconds) if rtu else {}
    return serial | {
        "merged_tags_per_s": merged_rate,
        "naive_tags_per_s": naive_rate,
        "speedup": merged_rate / naive_rate,
        "merged_requests_per_poll": merged_reqs,
        "naive_requests_per_poll": naive_reqs,
        "healthy_polls_per_s": without,
        "healthy_polls_per_s_with_dead_slave": with_dead,
        "healthy_rate_ratio_with_dead_slave": with_dead / without,
    }


@click.command()
@click.option("--devices", type=int, default=20, show_default=True)
@click.option("--tags", "tags_per_device", type=int, default=100, show_default=True)
@click.option("--seconds", type=float, default=3.0, show_default=True)
@click.option(
    "--spread",
    type=int,
    default=600,
    show_default=True,
    help="Tags sit at random addresses below this register.",
)
@click.option(
    "--max-gap",
    type=int,
    default=16,
    show_default=True,
    help="Registers a merged read may skip between two tags.",
)
@click.option(
    "--end-to-end/--no-end-to-end",
    "e2e",
    default=True,
    show_default=True,
    help="Also run the agent end to end (read -> signed, committed window) on its own core.",
)
@click.option(
    "--poll-ms", type=int, default=10, show_default=True, help="End to end: poll interval."
)
@click.option(
    "--rtu/--no-rtu",
    default=True,
    show_default=True,
    help="Also measure Modbus RTU over a socat pty pair (needs socat).",
)
def command(
    devices: int,
    tags_per_device: int,
    seconds: float,
    spread: int,
    max_gap: int,
    e2e: bool,
    poll_ms: int,
    rtu: bool,
) -> None:
    """Span merging vs one request per tag; healthy poll rate with a dead slave.

    \b
    Example:
      factoryops bench modbus --devices 20 --tags 100 --seconds 5
    """
    if rtu and shutil.which("socat") is None:
        click.echo(
            "socat is not installed (apt install socat): the RTU figure is skipped", err=True
        )
        rtu = False
    with Console().status("polling simulated devices on loopback"):
        r = asyncio.run(_run(devices, tags_per_device, seconds, spread, max_gap, rtu))
    if e2e:
        with Console().status("agent end to end: read -> window -> signature -> spool"):
            r |= end_to_end(devices, tags_per_device, max(seconds, 5.0), poll_ms)
    table = Table(
        title=f"Modbus TCP, {devices} devices x {tags_per_device} tags scattered "
        f"over {spread} registers, max gap {max_gap}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("tags/s, merged spans", f"{r['merged_tags_per_s']:,.0f}")
    table.add_row("tags/s, one request per tag", f"{r['naive_tags_per_s']:,.0f}")
    table.add_row("speedup", f"{r['speedup']:.1f}x")
    table.add_row(
        "requests per poll (merged / naive)",
        f"{r['merged_requests_per_poll']:.0f} / {r['naive_requests_per_poll']:.0f}",
    )
    table.add_row("healthy polls/s per device", f"{r['healthy_polls_per_s']:.2f}")
    table.add_row("... with one dead slave", f"{r['healthy_polls_per_s_with_dead_slave']:.2f}")
    table.add_row("ratio", f"{r['healthy_rate_ratio_with_dead_slave']:.3f}")
    for label, what in (("per_tag", "a read per tag"), ("merged", "merged, 1 read")):
        if f"rtu_requests_per_s_{label}" in r:
            bound = r[f"rtu_line_bound_requests_per_s_{label}"]
            table.add_row(
                f"RTU over a pty, 10 float32 tags, {what}: requests/s",
                f"{r[f'rtu_requests_per_s_{label}']:,.0f} (line at {RTU_BAUD} Bd: {bound:,.0f})",
            )
            table.add_row("RTU ... tags/s", f"{r[f'rtu_tags_per_s_{label}']:,.0f}")
    if e2e:
        table.add_row(
            f"end to end, {poll_ms} ms polling: tags/s committed (signed, fsynced)",
            f"{r['end_to_end_tags_per_s']:,.0f} (acquired {r['end_to_end_acquired_per_s']:,.0f})",
        )
        table.add_row(
            "... with the int8 twin scoring", f"{r['end_to_end_tags_per_s_with_model']:,.0f}"
        )
        table.add_row(
            "tags per second of the agent's CPU time (no model / int8 twin)",
            f"{r['end_to_end_tags_per_cpu_s']:,.0f} / "
            f"{r['end_to_end_tags_per_cpu_s_with_model']:,.0f}",
        )
        table.add_row(
            "agent RSS MiB (no model / int8 twin)",
            f"{r['agent_rss_mib_no_model']:.1f} / {r['agent_rss_mib']:.1f}",
        )
    Console().print(table)
    click.echo(json.dumps({k: round(v, 3) for k, v in r.items()}))
