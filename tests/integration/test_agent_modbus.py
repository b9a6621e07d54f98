"""The Modbus connector against a real pymodbus server on loopback.

A failing span (exception response) is counted per tag and never stops the other tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from agent.config import ModbusDeviceConfig, ModbusTag
from agent.connectors.base import Sample
from agent.connectors.modbus import ModbusConnector

REFUSED_FROM = 100  # the server answers ILLEGAL_ADDRESS for holding registers at and above


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _action(
    fc: int, start: int, address: int, count: int, regs: list[int], _set: Any
) -> ExcCodes | None:
    if fc == 3 and address >= REFUSED_FROM:
        return ExcCodes.ILLEGAL_ADDRESS
    if fc == 3:
        f = struct.unpack(">HH", struct.pack(">f", 21.5))
        regs[0:2] = list(f)
    if fc == 4:
        regs[0] = (-123) & 0xFFFF
    return None


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = _free_port()
    device = SimDevice(
        id=1,
        simdata=(
            [SimData(0, count=1, datatype=DataType.BITS)],
            [SimData(0, count=1, datatype=DataType.BITS)],
            [SimData(0, count=200, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=10, values=0, datatype=DataType.REGISTERS)],
        ),
        action=_action,
    )
    srv = ModbusTcpServer(device, address=("127.0.0.1", port))
    task = asyncio.create_task(srv.serve_forever())
    await asyncio.sleep(0.2)
    yield port
    # pymodbus's shutdown can wait forever on a connection the client is still closing;
    # bound it, then cancel the serving task either way
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await srv.shutdown()  # type: ignore[no-untyped-call]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_refused_span_is_counted_and_the_other_tags_keep_coming(server: int) -> None:
    cfg = ModbusDeviceConfig(
        name="plc",
        host="127.0.0.1",
        port=server,
        poll_interval_ms=20,
        timeout_ms=5000,  # generous: a loaded CI box must not turn answers into timeouts
        tags=(
            ModbusTag("Pressure", 0, unit="bar"),
            ModbusTag("Ghost", REFUSED_FROM, unit="bar"),
            ModbusTag("Temp", 0, table="input", type="int16", scale=0.1, unit="degC"),
        ),
    )
    connector = ModbusConnector(cfg)
    got: list[Sample] = []

    async def emit(samples: list[Sample]) -> None:
        got.extend(samples)

    task = asyncio.create_task(connector.run(emit))
    async with asyncio.timeout(20):
        while connector.polls < 5:  # noqa: ASYNC110 - polls is a plain counter, no event
            await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    names = {s.signal for s in got}
    assert names == {"Pressure", "Temp"}
    assert {s.value for s in got if s.signal == "Pressure"} == {21.5}
    assert all(s.value == pytest.approx(-12.3) for s in got if s.signal == "Temp")
    assert connector.errors["Ghost"] >= 5
    assert connector.errors["Pressure"] == 0


def _dead_device() -> ModbusDeviceConfig:
    """A device on a port nobody listens on: every connect is refused."""
    return ModbusDeviceConfig(
        name="dead",
        host="127.0.0.1",
        port=_free_port(),
        poll_interval_ms=20,
        timeout_ms=100,
        tags=(ModbusTag("x", 0),),
    )


async def _no_samples(samples: list[Sample]) -> None:
    raise AssertionError("a dead device produced samples")


async def test_a_dead_device_is_retried_without_crashing_the_connector() -> None:
    connector = ModbusConnector(_dead_device())

    task = asyncio.create_task(connector.run(_no_samples))
    await asyncio.sleep(1.0)
    assert not task.done()  # still retrying with backoff
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stop_while_connecting_to_a_dead_device_always_stops_the_connector() -> None:
    """pymodbus's connect() can swallow a cancellation and return False (asyncio.wait_for on
    Python 3.11, cpython gh-86296); the connector took that for a refused connect and went on
    reconnecting, so a SIGTERM right after the agent started could hang its stop forever."""
    cfg = _dead_device()

    for step in range(60):  # cancel at moments spread over the first connect attempts
        task = asyncio.create_task(ModbusConnector(cfg).run(_no_samples))
        for _ in range(step % 6):
            await asyncio.sleep(0)  # a few loop turns: inside connect() at different points
        await asyncio.sleep(0.0005 * (step // 6))
        task.cancel()
        await asyncio.wait({task}, timeout=10)  # a swallowed cancellation retries for ever
        assert task.cancelled(), f"the connector did not stop (cancelled after step {step})"


async def test_one_dead_slave_does_not_slow_the_healthy_devices() -> None:
    from benchmarks.modbus import FleetServer, SilentPeer, healthy_poll_rates

    tags = (ModbusTag("a", 0), ModbusTag("b", 4))
    async with FleetServer(3) as fleet, SilentPeer() as dead:
        without = await healthy_poll_rates(fleet.port, 3, tags, 2.0, None)
        with_dead = await healthy_poll_rates(fleet.port, 3, tags, 2.0, dead.port)
    assert without > 0
    assert with_dead / without >= 0.9  # the bound: healthy rates within 10 %
