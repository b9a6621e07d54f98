"""The Modbus connector against a real pymodbus server on loopback.

A failing span (exception response) is counted per tag and never stops the other tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from agent.config import ModbusDeviceConfig, ModbusTag
from agent.connectors.base import Sample, SourceGap
from agent.connectors.modbus import ModbusConnector
from attestation.localports import free_port
from hil_tests.tasks import Handler, TcpServer
from tests.waiting import until

REFUSED_FROM = 100  # the server answers ILLEGAL_ADDRESS for holding registers at and above


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


class ModbusPlc:
    """A real pymodbus server (unit 1, refusing holding registers from ``REFUSED_FROM``) that
    can be killed and started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._srv: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
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
        self._srv = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        self._task = asyncio.create_task(self._srv.serve_forever())
        await until(self._listening)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    async def kill(self) -> None:
        # pymodbus's shutdown can wait forever on a connection the client is still closing;
        # bound it, then cancel the serving task either way
        if self._srv is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._srv.shutdown()  # type: ignore[no-untyped-call]  # untyped
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._srv = self._task = None


@pytest.fixture
async def server() -> AsyncIterator[int]:
    plc = ModbusPlc()
    await plc.start()
    yield plc.port
    await plc.kill()


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

    async def emit(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        got.extend(samples)

    task = asyncio.create_task(connector.run(emit))
    await until(lambda: connector.polls >= 5, 20, "five polls")
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
        port=free_port(),
        poll_interval_ms=20,
        timeout_ms=100,
        tags=(ModbusTag("x", 0),),
    )


async def _no_samples(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
    if samples:
        raise AssertionError("a dead device produced samples")
    assert all(g.source == "dead" and g.reason == "disconnected" for g in gaps)


async def test_a_dead_device_is_retried_without_crashing_the_connector() -> None:
    connector = ModbusConnector(_dead_device())
    reports: list[SourceGap] = []

    async def emit(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        await _no_samples(samples, gaps)
        reports.extend(gaps)

    task = asyncio.create_task(connector.run(emit))
    await until(lambda: len(reports) >= 3 or task.done(), what="three refused connects")
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


@asynccontextmanager
async def _polling(
    peer: Handler, timeout_ms: int, tags: tuple[ModbusTag, ...] = (ModbusTag("x", 0),)
) -> AsyncIterator[tuple[ModbusConnector, list[SourceGap]]]:
    """A connector polling a TCP peer that ``peer`` serves, its breaker opening after three
    silent polls and then holding for ten minutes; the source gaps it states. The peer may
    answer the first poll, never a later one: a sample after a gap is a test failure."""
    server = await TcpServer.start(peer)
    cfg = ModbusDeviceConfig(
        "mute",
        "127.0.0.1",
        port=server.port,
        poll_interval_ms=10,
        timeout_ms=timeout_ms,
        breaker_failures=3,
        breaker_open_ms=600_000,
        tags=tags,
    )
    connector = ModbusConnector(cfg)
    gaps: list[SourceGap] = []

    async def sink(samples: list[Sample], found: Sequence[SourceGap] = ()) -> None:
        assert not (samples and gaps)
        gaps.extend(found)

    task = asyncio.create_task(connector.run(sink))
    try:
        yield connector, gaps
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()  # with every connection's handler (Python 3.11 left them)


async def test_a_host_that_takes_tcp_but_never_answers_modbus_opens_the_breaker() -> None:
    """A host on the Modbus port that takes the connection but does not speak Modbus (it
    hangs up on the request, as another service would): the failed poll left the poll loop
    before it reached the breaker, and the backoff started over at every TCP connect, so the
    connector reconnected every 20-190 ms for ever (issue 17)."""
    connections = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError):
            await reader.read(4096)
        writer.close()

    async with _polling(hang_up, timeout_ms=50) as (connector, gaps):
        failures = connector.config.breaker_failures
        await until(lambda: connector.breaker.trips == 1, what="the breaker opens")
        # open: the next connection waits out the open period (one attempt per period)
        await until(lambda: connector.reconnects == failures, what="a reconnect")
        assert connector.reconnect_at >= connector.breaker.open_until
        assert connections == failures  # not one every 20-190 ms
        assert {g.reason for g in gaps} <= {"timeout", "disconnected"}


async def test_a_connection_on_which_nothing_answered_is_opened_anew() -> None:
    """A connection that takes requests and never answers (a gateway or proxy whose PLC
    died, a NAT that lost its state) is closed after the first silent poll and a new one
    opened: pymodbus kept it until its third unanswered request, which the breaker spaces
    out, so a PLC that came back stayed unread for ~18 s (the plc_faults rig in CI). The
    device's outage stays ``timeout``: it was silent, the link did not drop."""
    requests: list[int] = []  # per connection, in the order accepted
    ended: list[bool] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = len(requests)
        requests.append(0)
        ended.append(False)
        with contextlib.suppress(ConnectionError):
            while await reader.read(260):  # a Modbus TCP frame is at most 260 bytes
                requests[i] += 1
        ended[i] = True  # the agent closed it
        writer.close()

    async with _polling(mute, timeout_ms=100) as (_, gaps):
        await until(lambda: len(ended) >= 2 and all(ended[:2]), what="two connections closed")
        assert requests[:2] == [1, 1]  # one unanswered request each, then a new connection
        assert {g.reason for g in gaps} == {"timeout"}


async def test_a_device_that_goes_silent_mid_poll_is_a_timeout_gap_from_then_on() -> None:
    """A link that dies half-way through a poll of many spans (the plc_faults rig's partition
    in CI, the device read tag by tag): each further span cost a timeout, and at the fourth
    pymodbus closed the connection, so the outage was signed as ``disconnected`` per tag, and
    the device's own ``timeout`` gap was never stated. Two spans in a row unanswered after
    an answer end the poll; the device's timeout gap starts at the first of them."""
    requests: list[int] = []  # per connection
    open_now = 0  # connections the peer has not seen closed yet
    tags = tuple(ModbusTag(f"t{i}", 300 * i) for i in range(8))  # 8 spans: none merge

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        requests.append(0)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                    fc, _, count = struct.unpack(">BHH", await reader.readexactly(length - 1))
                    requests[-1] += 1
                    if sum(requests) == 1:  # the first request ever: answered, then silence
                        pdu = struct.pack(">BB", fc, 2 * count) + bytes(2 * count)
                        writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
        finally:
            writer.close()
            open_now -= 1

    async with _polling(answer_once, timeout_ms=100, tags=tags) as (_, gaps):
        await until(lambda: len(requests) >= 2, what="a second connection")
        device = [g for g in gaps if g.source == "mute"]
        assert device, f"no gap of the device: {gaps}"
        assert {g.reason for g in gaps} == {"timeout"}
        assert requests[0] == 3  # the answer, then two timeouts: the poll ended
        poll_ts = min(g.first_ts_ns for g in gaps if g.source != "mute")
        assert poll_ts < device[0].first_ts_ns  # it starts at the first timeout
    # the stopped connector closed its connection: the peer's side too, before the loop ends
    await until(lambda: open_now == 0, what="the peer's connections closed")
