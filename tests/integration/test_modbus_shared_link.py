"""Modbus devices on one host:port share one TCP connection and take turns fairly.

A real pymodbus server (pymodbus 3.16) stands for a gateway with five unit ids behind one
port: three healthy, one that answers every read with an exception, one dead (the server
ignores its requests, so each read times out). The devices' polls are counted against a
reference device on a connection of its own to a second server: the dead unit may cost the
others one timeout per open breaker period, never one per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simcore import SimCore
from pymodbus.simulator.simutils import DataType

from agent.config import ModbusDeviceConfig, ModbusTag, parse_config
from agent.connectors.base import Sample, SourceGap
from agent.connectors.modbus import ModbusConnector
from agent.errors import ConfigError
from attestation.localports import free_port
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)
HEALTHY = (1, 2, 3)
REFUSING = 4  # answers every read with ILLEGAL_ADDRESS
DEAD = 9  # not served: the server ignores its requests (a dead unit behind a gateway)


async def _refuse(*_: Any) -> ExcCodes:
    return ExcCodes.ILLEGAL_ADDRESS


class ServedUnitsOnly(SimCore):
    """pymodbus's simulator answers an unknown unit as unit 0; a gateway does not: with
    ``ignore_missing_devices`` the server then never answers it (a dead unit)."""

    async def async_getValues(self, device_id: int, *args: Any, **kw: Any) -> Any:
        if device_id not in self.device_ids():
            raise NoSuchIdException(f"no unit {device_id}")
        return await super().async_getValues(device_id, *args, **kw)


class CountingServer(ModbusTcpServer):
    """A pymodbus TCP server that counts the connections it accepted."""

    accepted = 0

    def __init__(self, units: list[SimDevice], port: int) -> None:
        super().__init__(units, address=("127.0.0.1", port), ignore_missing_devices=True)
        self.context = ServedUnitsOnly(units)

    def handle_new_connection(self) -> Any:
        self.accepted += 1
        return super().handle_new_connection()


def _unit(unit: int) -> SimDevice:
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(1, count=8, datatype=DataType.BITS)],
            [SimData(1, count=8, datatype=DataType.BITS)],
            [SimData(1, count=16, values=7, datatype=DataType.REGISTERS)],
            [SimData(1, count=16, values=0, datatype=DataType.REGISTERS)],
        ),
        action=_refuse if unit == REFUSING else None,
    )


@asynccontextmanager
async def gateway(units: Sequence[int]) -> AsyncIterator[CountingServer]:
    port = free_port()
    server = CountingServer([_unit(u) for u in units], port)
    task = asyncio.create_task(server.serve_forever())
    # listening once the listener has its transport (a probe connection would be counted)
    await until(lambda: server.transport is not None, what="the gateway listens")
    try:
        yield server
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus: untyped
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _port(server: CountingServer) -> int:
    address = server.comm_params.source_address
    assert address is not None
    return int(address[1])


def _device(name: str, port: int, unit: int, *, shared: bool = True) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(
        name=name,
        host="127.0.0.1",
        port=port,
        device_id=unit,
        poll_interval_ms=50,
        timeout_ms=250,
        breaker_failures=3,
        breaker_open_ms=3000,
        share_connection=shared,
        tags=(ModbusTag(f"{name}.t", 1, type="uint16"),),
    )


async def test_units_behind_one_port_share_a_connection_and_a_dead_one_starves_none() -> None:
    async with gateway((*HEALTHY, REFUSING)) as gw, gateway((1,)) as other:
        port = _port(gw)
        healthy = [ModbusConnector(_device(f"u{u}", port, u)) for u in HEALTHY]
        refusing = ModbusConnector(_device("refusing", port, REFUSING))
        dead = ModbusConnector(_device("dead", port, DEAD))
        # the yardstick: the same polls on a connection nobody else uses
        reference = ModbusConnector(_device("reference", _port(other), 1, shared=False))
        everyone = [*healthy, refusing, dead, reference]
        got: list[Sample] = []
        gaps: list[SourceGap] = []

        async def emit(samples: list[Sample], found: Sequence[SourceGap] = ()) -> None:
            got.extend(samples)
            gaps.extend(found)

        tasks = [asyncio.create_task(c.run(emit)) for c in everyone]
        try:
            await until(lambda: dead.breaker.trips >= 1, what="the dead unit's breaker opens")
            before = [c.polls for c in everyone]
            # two whole open periods, each with its one half-open timeout
            await until(lambda: dead.breaker.trips >= 3, what="two more open periods")
            polled = [c.polls - b for c, b in zip(everyone, before, strict=True)]
            assert sum(c.reconnects for c in everyone) == 0
            assert gw.accepted == 1  # five devices, one connection
            assert len(gw.active_connections) == 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    *shared, _, ref = polled
    # each answering device kept its poll rate: within 15 % of the unshared reference's
    # polls over the same stretch (the dead unit's two half-open timeouts cost ~10 polls)
    assert ref > 0
    assert all(n >= 0.85 * ref for n in shared), (shared, ref)
    assert {s.signal for s in got} == {"u1.t", "u2.t", "u3.t", "reference.t"}
    assert {s.value for s in got} == {7.0}
    assert {(g.source, g.reason) for g in gaps} >= {("refusing.t", "exception:2")}
    assert {g.reason for g in gaps if g.source == "dead"} == {"timeout"}
    assert not [g for g in gaps if g.source.startswith("u") or g.source == "reference"]


async def test_share_connection_false_opens_a_connection_of_its_own() -> None:
    async with gateway(HEALTHY) as gw:
        port = _port(gw)
        own = [ModbusConnector(_device(f"u{u}", port, u, shared=False)) for u in HEALTHY]

        async def emit(samples: list[Sample], found: Sequence[SourceGap] = ()) -> None:
            return None

        tasks = [asyncio.create_task(c.run(emit)) for c in own]
        try:
            await until(lambda: all(c.polls >= 3 for c in own), what="every device polled")
            assert gw.accepted == len(HEALTHY)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def test_devices_sharing_a_connection_must_agree_on_its_timeout() -> None:
    text = '[device]\nname = "gw"\n' + "".join(
        f'[[modbus]]\nname = "{name}"\nhost = "10.0.0.7"\ndevice_id = {unit}\n'
        f'timeout_ms = {timeout}\n[[modbus.signals]]\nname = "{name}.x"\naddress = 0\n'
        for unit, (name, timeout) in enumerate((("a", 500), ("b", 800)), 1)
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/tmp/gw.toml")
    assert err.value.key == "modbus[1].timeout_ms"
    assert "10.0.0.7:502" in str(err.value)
    assert "share_connection = false" in str(err.value)
    alone = text.replace("timeout_ms = 800", "timeout_ms = 800\nshare_connection = false")
    assert parse_config(alone, "/tmp/gw.toml").modbus[1].link is None


async def test_a_device_is_covered_only_once_the_shared_link_is_its_own() -> None:
    """The runtime's seq mark covers a request's samples just before it goes out (ADR 0017):
    on a shared link that is once the device holds the link, so devices waiting their turn
    have nothing covered in flight and a kill states only the request on the wire lost."""
    async with gateway(HEALTHY) as gw:
        port = _port(gw)
        devices = [ModbusConnector(_device(f"u{u}", port, u)) for u in HEALTHY]
        calls: list[tuple[str, int, bool]] = []

        def expect_of(conn: ModbusConnector) -> Any:
            async def expect(n: int) -> None:
                lock = conn._lock
                calls.append((conn.name, n, lock is not None and lock.locked()))

            return expect

        async def emit(samples: list[Sample], found: Sequence[SourceGap] = ()) -> None:
            return None

        for conn in devices:
            conn.bind_expect(expect_of(conn))
        tasks = [asyncio.create_task(c.run(emit)) for c in devices]
        try:
            await until(lambda: all(c.polls >= 5 for c in devices), what="every device polled")
            assert gw.accepted == 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert {name for name, _, _ in calls} == {c.name for c in devices}
    assert {n for _, n, _ in calls} == {1}  # one tag a device: one sample a request
    assert all(held for _, _, held in calls), [c for c in calls if not c[2]][:3]
