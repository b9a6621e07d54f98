"""The SIMULATED plant over Modbus TCP, read by a real pymodbus client on loopback.

The plant is a simulation (hil_tests.plant); the server, client and protocol are real.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException

from agent.config import ModbusTag
from agent.connectors.modbus import decode
from hil_tests.feed import FeedLimits
from hil_tests.modbus_server import (
    DEVICE_ID,
    PLANT_REGISTER_MAP,
    PlantServer,
    RegisterSpec,
    decode_registers,
)
from hil_tests.plant import SIGNALS
from hil_tests.skab import read_skab

# the feed's own timer never fires during a test: the test steps the plant with tick()
STILL = FeedLimits().max_period_s


def as_tag(s: RegisterSpec) -> ModbusTag:
    """The agent's tag for a register of the map: the same fields, the agent's decoder."""
    return ModbusTag(
        name=s.signal,
        address=s.address,
        table=s.table,
        type=s.type,
        word_order=s.word_order,
        scale=s.scale,
        offset=s.offset,
        unit=s.unit,
    )


async def read_all(client: AsyncModbusTcpClient) -> dict[str, float]:
    tables = {}
    for table, read in (
        ("holding", client.read_holding_registers),
        ("input", client.read_input_registers),
    ):
        size = max(s.address + s.count for s in PLANT_REGISTER_MAP if s.table == table)
        rr = await read(0, count=size, device_id=DEVICE_ID)
        assert not rr.isError(), rr
        tables[table] = rr.registers
    out = {}
    for spec in PLANT_REGISTER_MAP:
        regs = tables[spec.table][spec.address : spec.address + spec.count]
        agent_value = decode(regs, as_tag(spec))
        assert agent_value == pytest.approx(decode_registers(spec, regs), abs=1e-9)
        out[spec.signal] = agent_value
    return out


def assert_served(got: dict[str, float], truth: dict[str, float]) -> None:
    for spec in PLANT_REGISTER_MAP:
        want = truth[spec.signal]
        if spec.type == "float32":
            assert got[spec.signal] == struct.unpack(">f", struct.pack(">f", want))[0]
        else:
            assert got[spec.signal] == pytest.approx(want, abs=spec.scale / 2 + 1e-9)


@pytest.fixture
async def client_of() -> AsyncIterator[list[AsyncModbusTcpClient]]:
    clients: list[AsyncModbusTcpClient] = []
    yield clients
    for c in clients:
        c.close()


async def connect(port: int, clients: list[AsyncModbusTcpClient]) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    clients.append(client)
    assert await client.connect()
    return client


async def test_a_pymodbus_client_reads_the_plants_current_values_decoded_by_the_agent(
    client_of: list[AsyncModbusTcpClient],
) -> None:
    async with PlantServer(period_s=STILL, seed=11) as srv:
        client = await connect(srv.port, client_of)
        for _ in range(3):
            assert_served(await read_all(client), srv.values)
            srv.feed.tick()


async def test_the_register_map_covers_every_signal_without_overlap() -> None:
    assert {s.signal for s in PLANT_REGISTER_MAP} == set(SIGNALS)
    for table in ("holding", "input"):
        used = [
            a
            for s in PLANT_REGISTER_MAP
            if s.table == table
            for a in range(s.address, s.address + s.count)
        ]
        assert len(used) == len(set(used))


async def test_an_injected_exception_code_reaches_the_client_and_clears(
    client_of: list[AsyncModbusTcpClient],
) -> None:
    async with PlantServer(period_s=STILL) as srv:
        client = await connect(srv.port, client_of)
        srv.modbus.exception = 4  # SERVER DEVICE FAILURE (Modbus spec 1.1b3 §7)
        rr = await client.read_holding_registers(0, count=2, device_id=DEVICE_ID)
        assert rr.isError() and rr.exception_code == 4
        srv.modbus.exception = None
        assert_served(await read_all(client), srv.values)


async def test_a_dropped_server_refuses_connections_then_serves_again_on_the_same_port(
    client_of: list[AsyncModbusTcpClient],
) -> None:
    async with PlantServer(period_s=STILL) as srv:
        port = srv.port
        await srv.modbus.stop()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        client_of.append(client)
        assert not await client.connect()
        with pytest.raises(ConnectionException):
            await client.read_holding_registers(0, count=2, device_id=DEVICE_ID)
        await srv.modbus.start()
        assert srv.port == port
        assert_served(await read_all(await connect(port, client_of)), srv.values)


def write_skab(path: Path, n: int) -> list[dict[str, float]]:
    """n rows one second apart, each signal's value distinct per row."""
    rows = [{name: 10.0 * i + k + 0.25 for k, name in enumerate(SIGNALS)} for i in range(n)]
    lines = ["datetime;" + ";".join(SIGNALS)]
    lines += [
        f"2020-03-09 10:14:{i:02d};" + ";".join(str(r[name]) for name in SIGNALS)
        for i, r in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


async def test_a_skab_replay_serves_every_row_in_order_then_loops(
    tmp_path: Path, client_of: list[AsyncModbusTcpClient]
) -> None:
    rows = write_skab(tmp_path / "replay.csv", 4)
    # one tick = one plant second = one row
    async with PlantServer(period_s=STILL, speed=1 / STILL, replay=tmp_path / "replay.csv") as srv:
        client = await connect(srv.port, client_of)
        for i in range(9):
            assert_served(await read_all(client), rows[i % 4])
            srv.feed.tick()


async def test_a_real_skab_file_replays_its_first_rows_in_order(
    skab_dir: Path, client_of: list[AsyncModbusTcpClient]
) -> None:
    path = skab_dir / "valve1" / "0.csv"
    rows = list(read_skab(path))[:20]
    t0 = rows[0].ts
    async with PlantServer(period_s=STILL, speed=1 / STILL, replay=path) as srv:
        client = await connect(srv.port, client_of)
        for second in range(10):
            # the row on screen is the last one whose timestamp has been reached
            want = [r for r in rows if (r.ts - t0).total_seconds() <= second][-1]
            assert_served(await read_all(client), dict(want.values))
            srv.feed.tick()
