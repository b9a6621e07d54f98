"""Modbus RTU over a real serial line (a socat pty pair) to a pymodbus serial server:
registers and bits from two slaves on one bus, a tag past the end of a slave's map (its
exception response counted, the tags it was merged with still read), and a dead slave on the
same bus that the circuit breaker keeps from eating the others' bus time.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from agent.config import ModbusDeviceConfig, parse_config
from agent.connectors.base import Sample, SourceGap
from agent.connectors.modbus import ModbusConnector
from tests.conftest import missing
from tests.ptys import PtyPair, socat_available
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


HOLDING = 10  # holding registers 0..9; a read past them is refused


async def _refuse_past_the_end(
    fc: int, start: int, address: int, count: int, regs: list[int], _set: Any
) -> ExcCodes | None:
    # pymodbus 3.16's simulator wraps register reads past a block's end around to its start;
    # a real PLC refuses them (ILLEGAL DATA ADDRESS), so make the simulator do that
    if fc == 3 and address + count > HOLDING:
        return ExcCodes.ILLEGAL_ADDRESS
    return None


def _device(dev_id: int, pressure: float) -> SimDevice:
    regs = list(struct.unpack(">HH", struct.pack(">f", pressure)))
    return SimDevice(
        id=dev_id,
        simdata=(
            [SimData(0, count=1, values=[0b0000_0000_0000_0101], datatype=DataType.BITS)],
            [SimData(0, count=1, values=[0b10], datatype=DataType.BITS)],
            [SimData(0, count=HOLDING, values=regs + [0] * 8, datatype=DataType.REGISTERS)],
            [
                SimData(
                    0,
                    count=10,
                    values=[dev_id * 100 + k for k in range(10)],
                    datatype=DataType.REGISTERS,
                )
            ],
        ),
        action=_refuse_past_the_end,
    )


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[PtyPair]:
    if not socat_available():
        missing("socat is not installed (apt install socat)")
    pair = PtyPair(tmp_path / "rs485").start()
    yield pair
    pair.stop()


def _silent_for_unknown_ids(server: ModbusSerialServer) -> None:
    """Make ``ignore_missing_devices`` work: a real bus is silent for an absent slave id.

    pymodbus 3.16's SimCore raises KeyError, not NoSuchIdException, for an unknown id, so
    the server answers exception 4 (device failure) instead of ignoring the request.
    """
    ctx = server.context
    ids = set(ctx.device_ids())
    real_get = ctx.async_getValues

    async def get(device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        if device_id not in ids:
            raise NoSuchIdException(f"device id {device_id}")
        return await real_get(device_id, func_code, address, count)

    ctx.async_getValues = get  # type: ignore[method-assign]  # patching the simulator's read to go silent for unknown ids


@asynccontextmanager
async def _slaves(port: Path) -> AsyncIterator[None]:
    server = ModbusSerialServer(
        [_device(1, 12.5), _device(2, -3.25)],
        framer=FramerType.RTU,
        port=str(port),
        baudrate=115200,
        ignore_missing_devices=True,
    )
    _silent_for_unknown_ids(server)
    await server.serve_forever(background=True)  # returns once the port is open
    try:
        yield
    finally:
        async with asyncio.timeout(5):
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus's shutdown() is unannotated


def _configs(port: Path) -> list[ModbusDeviceConfig]:
    common = (
        f'transport = "rtu"\nserial_port = "{port}"\nbaudrate = 115200\n'
        "timeout_ms = 150\nbreaker_failures = 2\nbreaker_open_ms = 60000\n"
    )
    text = f"""
[device]
name = "gw"
[[modbus]]
name = "press"
device_id = 1
poll_interval_ms = 50
{common}
groups = {{ slow = 300 }}
[[modbus.tags]]
name = "pressure"
address = 0
type = "float32"
[[modbus.tags]]
name = "pump_on"
table = "coil"
address = 2
group = "slow"
[[modbus.tags]]
name = "door_open"
table = "discrete"
address = 1
[[modbus.tags]]
name = "count"
table = "input"
address = 3
type = "uint16"
[[modbus.tags]]
name = "ghost"                 # registers 9 and 10: the slave has 0..9, so this read fails
address = 9
type = "float32"
[[modbus]]
name = "dryer"
device_id = 2
poll_interval_ms = 50
{common}
[[modbus.tags]]
name = "temp"
address = 0
type = "float32"
[[modbus]]
name = "dead"
device_id = 9
poll_interval_ms = 50
{common}
[[modbus.tags]]
name = "nothing"
address = 0
type = "uint16"
"""
    return list(parse_config(text, "a.toml").modbus)


async def test_two_slaves_and_a_dead_one_share_an_rtu_bus(bus: PtyPair) -> None:
    got: list[Sample] = []

    async def emit(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        got.extend(samples)

    async with _slaves(bus.b):
        press, dryer, dead = (ModbusConnector(c) for c in _configs(bus.a))
        tasks = [asyncio.create_task(c.run(emit)) for c in (press, dryer, dead)]
        try:
            await until(lambda: dead.breaker.trips >= 1)
            healthy = (press.polls, dryer.polls)
            await until(lambda: press.polls >= healthy[0] + 20 and dryer.polls >= healthy[1] + 20)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    last = {s.signal: s.value for s in got}
    assert last == {
        "pressure": 12.5, "pump_on": 1.0, "door_open": 1.0, "count": 103.0, "temp": -3.25,
    }  # fmt: skip
    assert dead.errors["nothing"] == 2  # two timeouts opened the breaker; then it waits
    assert dead.timeouts["nothing"] == 2 and not dead.exception_codes
    # pressure and ghost share a merged read; its refusal split it, so only ghost is missing
    # ... and it is refused on every poll of its group (the fast one, as pressure): the
    # count of press's polls includes its slow group's, so it is not a bound on ghost's
    fast_polls = sum(s.signal == "pressure" for s in got)
    assert set(press.errors) == {"ghost"} and fast_polls >= 17
    assert abs(press.errors["ghost"] - fast_polls) <= 1  # a cancel may land between the two
    assert set(press.exception_codes) == {("ghost", 2)}  # ILLEGAL DATA ADDRESS, §7
    assert not press.timeouts and dryer.errors == {}
    assert press.breaker.trips == 0  # an exception response is an answer, not a dead slave
    # the slow group polls less often than the fast one
    assert 0 < sum(s.signal == "pump_on" for s in got) < sum(s.signal == "pressure" for s in got)
