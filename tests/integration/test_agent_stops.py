"""Every stop of the agent finishes, under load, with its peers up, down and flapping, and
loses nothing: what it numbered is committed, what was committed stays, the chain runs on
with no gap record (a clean stop owes none).

The agent runs in this process (``AgentRuntime.run`` until its stop event is set: what
SIGTERM and Ctrl-C do in ``factoryops agent run``), against real peers on loopback: two
Modbus units behind one pymodbus server that stays up (sharing one connection), one
pymodbus server killed and restarted at random moments while the agent runs, a Modbus port
nobody listens on, and an asyncua server stopped and started every few runs. Each run is
stopped at a different moment: before it started, while it connects, after it read, after
it committed a window. A stop that takes more than 10 s is a hang (issue 17 saw 1 in 23
Ctrl-C stops hang): the bound is a correctness limit, not a timing assertion.

``FACTORYOPS_STOPS`` sets the number of stops: 40 in ``make test``, 200 in ``make slow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import sys
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.runtime import AgentRuntime, build_runtime
from attestation import parse_microproof, verify_chain
from attestation.localports import free_port
from attestation.signers.software import SoftwareSigner
from benchmarks.modbus import FleetServer
from tests.integration.test_agent_modbus import ModbusPlc
from tests.integration.test_connector_opcua import PlcServer
from tests.waiting import until

STOPS = int(os.environ.get("FACTORYOPS_STOPS", "40"))
STOP_BOUND_S = 10.0  # a stop past this is a hang
pytestmark = pytest.mark.timeout(300 + 3 * STOPS)


def _config(tmp: Path, steady: int, flappy: int, dead: int, opc_url: str) -> str:
    def modbus(name: str, port: int, unit: int, timeout_ms: int) -> str:
        return (
            f'[[modbus]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\n'
            f"device_id = {unit}\npoll_interval_ms = 20\ntimeout_ms = {timeout_ms}\n"
            f'[[modbus.signals]]\nname = "{name}.a"\naddress = 0\n'
            f'[[modbus.signals]]\nname = "{name}.b"\naddress = 4\ntype = "uint16"\n'
        )

    return "\n".join(
        [
            f'[device]\nname = "stops"\nkey_file = "{tmp / "device.key"}"',
            "[window]\nmax_readings = 200\nmax_ms = 100",
            f'[spool]\npath = "{tmp / "spool.db"}"',
            modbus("steady-1", steady, 1, 1000),
            modbus("steady-2", steady, 2, 1000),
            modbus("flappy", flappy, 1, 200),
            modbus("dead", dead, 1, 200),
            f'[[opcua]]\nname = "opc"\nurl = "{opc_url}"\npublishing_interval_ms = 50\n'
            '[[opcua.signals]]\nname = "opc.pressure"\nnode = "ns=2;s=Pressure"\n',
        ]
    )


@contextlib.asynccontextmanager
async def _flapping(plc: ModbusPlc, rng: random.Random) -> AsyncIterator[None]:
    """Kill and restart ``plc`` at random moments while the body runs."""

    async def flap() -> None:
        while True:
            await asyncio.sleep(rng.uniform(0.1, 0.8))
            await plc.kill()
            await asyncio.sleep(rng.uniform(0.1, 0.8))
            await plc.start()

    task = asyncio.create_task(flap())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await plc.kill()


_OPC_DOWN: set[int] = set()  # ports of the OPC UA servers stopped by ``_toggle``


async def _toggle(opc: PlcServer) -> None:
    """Stop the OPC UA server, or start it again (the same server: building a new one's
    address space takes ~15 s on a loaded machine)."""
    assert opc.server is not None
    if opc.port in _OPC_DOWN:
        await opc.server.start()
        _OPC_DOWN.discard(opc.port)
    else:
        await opc.server.stop()
        _OPC_DOWN.add(opc.port)


async def _changing(opc: PlcServer) -> None:
    """A value that changes every 50 ms while the OPC UA server is up."""
    value = 0.0
    while True:
        if opc.port not in _OPC_DOWN:
            value += 1.0
            await opc.write("Pressure", value)
        await asyncio.sleep(0.05)


def _windows(spool: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        return db.execute("SELECT window, cose FROM windows ORDER BY window").fetchall()


def _hang_report(task: asyncio.Task[None]) -> str:
    """Where every task of the loop is, for the failure message of a hung stop."""
    lines = []
    for t in asyncio.all_tasks():
        frames = t.get_stack(limit=6)
        lines.append(f"{t.get_name()}: " + " <- ".join(f"{f.f_code.co_name}" for f in frames))
    return "\n".join(lines) + "\n" + "".join(traceback.format_stack(limit=3, f=sys._getframe()))


async def _moment(runtime: AgentRuntime, kind: int, rng: random.Random) -> None:
    """Let the run reach a stop moment of kind ``kind`` (0..3)."""
    if kind == 0:
        return  # stopped before it began: the stop event is set as run() starts
    if kind == 1:
        for _ in range(rng.randrange(1, 200)):  # somewhere in start-up and connecting
            await asyncio.sleep(0)
        return
    if kind == 2:
        target = rng.randrange(1, 60)  # after it has read some
        await until(lambda: runtime.counters.readings_acquired >= target, 60, "readings")
        return
    await until(lambda: runtime.counters.windows_signed >= 1, 60, "a committed window")


async def test_every_stop_finishes_and_loses_nothing_committed(tmp_path: Path) -> None:
    rng = random.Random(17)
    flappy = ModbusPlc()
    await flappy.start()
    opc = await PlcServer().start()
    writer = asyncio.create_task(_changing(opc))
    committed_total = 0
    seen: list[tuple[int, bytes]] = []
    try:
        async with FleetServer(2) as steady, _flapping(flappy, rng):
            text = _config(tmp_path, steady.port, flappy.port, free_port(), opc.url)
            cfg = parse_config(text, str(tmp_path / "agent.toml"))
            signer = SoftwareSigner.load_or_create(cfg.device.key_file)
            for i in range(STOPS):
                if i % 10 in (5, 8):  # the OPC UA server goes away for a few runs, then returns
                    await _toggle(opc)
                runtime = build_runtime(cfg, signer)
                stop = asyncio.Event()
                task = asyncio.create_task(runtime.run(stop), name=f"agent run {i}")
                await _moment(runtime, i % 4, rng)
                stop.set()
                done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
                if not done:
                    pytest.fail(f"stop {i} (kind {i % 4}) hung:\n{_hang_report(task)}")
                task.result()  # a run that failed says why
                c = runtime.counters
                # (1) what this run numbered is committed: a clean stop loses none of it
                assert c.readings_committed == c.readings_acquired, (i, c)
                assert c.gap_records == 0, (i, c)
                committed_total += c.readings_committed
                # (2) what earlier runs committed is still there, byte for byte
                now = _windows(cfg.spool.path)
                assert now[: len(seen)] == seen, f"stop {i} changed committed windows"
                seen = now
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        if opc.port in _OPC_DOWN:
            await _toggle(opc)  # stop() stops a running server
        await opc.stop()
    # (3) one unbroken chain: every seq of every run in it, no gap record, no recovery
    coses = [c for _, c in seen]
    verify_chain(coses)
    proofs = [parse_microproof(c).proof for c in coses]
    assert not [g for p in proofs for g in p.gaps]
    assert not [p.window for p in proofs if p.recovery is not None]
    assert sum(p.count for p in proofs) == committed_total
    assert committed_total > STOPS  # it was under load: most runs read something
