"""Serves the SIMULATED plant (or a SKAB replay) over Modbus TCP with pymodbus's server.

``PLANT_REGISTER_MAP`` is the register map as data; ``ModbusFace`` answers reads from the
feed's current sample and carries the transport faults a HIL rig injects; ``PlantServer``
is the in-process plant (feed + Modbus, optionally OPC UA and MQTT) the demo and tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from attestation.localports import free_port
from hil_tests.errors import HilError
from hil_tests.feed import ModelSource, PlantFeed, ReplaySource, ValueSource
from hil_tests.plant import DEFAULT_FAULTS, SIGNALS, Fault, PumpPlant
from hil_tests.tasks import stop_all

__all__ = [
    "DEVICE_ID",
    "PLANT_REGISTER_MAP",
    "ModbusFace",
    "PlantServer",
    "RegisterSpec",
    "agent_modbus_section",
    "decode_registers",
    "encode_value",
]

log = logging.getLogger(__name__)
DEVICE_ID = 1  # the unit / device id the plant answers to
_FC_TABLE = {3: "holding", 4: "input"}  # Modbus read function code -> table
_INT16 = (-32768, 32767)


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where one signal lives and how to turn its registers back into the value.

    engineering value = raw * scale + offset (the agent's ``[[modbus.tags]]`` convention);
    ``word_order`` "big" puts the high word first, "little" swaps the words (CDAB).
    """

    signal: str
    table: str  # "holding" | "input"
    address: int  # 0-based protocol address, as on the wire
    type: str  # "float32" | "int16"
    word_order: str
    scale: float
    offset: float
    unit: str

    @property
    def count(self) -> int:
        return 2 if self.type == "float32" else 1


# Most signals are IEEE float32 holding registers; Voltage is word-swapped (CDAB), as many
# PLCs store floats; Current and the two temperatures are scaled int16 input registers, as
# analogue input cards deliver them. Together they exercise every decoding path of the agent.
PLANT_REGISTER_MAP: tuple[RegisterSpec, ...] = (
    RegisterSpec("Accelerometer1RMS", "holding", 0, "float32", "big", 1.0, 0.0, "g"),
    RegisterSpec("Accelerometer2RMS", "holding", 2, "float32", "big", 1.0, 0.0, "g"),
    RegisterSpec("Pressure", "holding", 4, "float32", "big", 1.0, 0.0, "bar"),
    RegisterSpec("Voltage", "holding", 6, "float32", "little", 1.0, 0.0, "V"),
    RegisterSpec("Volume Flow RateRMS", "holding", 8, "float32", "big", 1.0, 0.0, "l/min"),
    RegisterSpec("Current", "input", 0, "int16", "big", 0.001, 0.0, "A"),
    # hundredths of a degree above -50 degC: -50..277 degC fits a signed word
    RegisterSpec("Temperature", "input", 1, "int16", "big", 0.01, -50.0, "degC"),
    RegisterSpec("Thermocouple", "input", 2, "int16", "big", 0.01, 0.0, "degC"),
)
assert {s.signal for s in PLANT_REGISTER_MAP} == set(SIGNALS), "every signal has a register"
assert all(SIGNALS[s.signal] == s.unit for s in PLANT_REGISTER_MAP), "units match the plant"


def encode_value(spec: RegisterSpec, value: float) -> list[int]:
    """Value -> the registers a PLC would hold; int16 saturates at its range, as PLCs do."""
    if spec.type == "float32":
        words = list(struct.unpack(">HH", struct.pack(">f", value)))
    else:
        raw = round((value - spec.offset) / spec.scale)
        words = [max(_INT16[0], min(_INT16[1], raw)) & 0xFFFF]
    return words[::-1] if spec.word_order == "little" else words


def decode_registers(spec: RegisterSpec, registers: Sequence[int]) -> float:
    """Registers -> engineering value (the inverse of ``encode_value``, used by tests and rigs)."""
    words = list(registers)[::-1] if spec.word_order == "little" else list(registers)
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    number = struct.unpack(">f" if spec.type == "float32" else ">h", raw)[0]
    return float(number) if spec.type == "float32" else number * spec.scale + spec.offset


def agent_modbus_section(host: str, port: int, *, poll_interval_ms: int = 100) -> str:
    """The ``[[modbus]]`` TOML an agent needs to read this server (used by the demo)."""
    lines = [
        "[[modbus]]",
        'name = "pump-plc"',
        f'host = "{host}"',
        f"port = {port}",
        f"device_id = {DEVICE_ID}",
        f"poll_interval_ms = {poll_interval_ms}",
        "timeout_ms = 1000",
        "",
    ]
    for s in PLANT_REGISTER_MAP:
        lines += [
            "[[modbus.tags]]",
            f'name = "{s.signal}"',
            f'table = "{s.table}"',
            f"address = {s.address}",
            f'type = "{s.type}"',
            f'word_order = "{s.word_order}"',
            f"scale = {s.scale}",
            f"offset = {s.offset}",
            f'unit = "{s.unit}"',
            "",
        ]
    return "\n".join(lines)


def _table_size(table: str, specs: Sequence[RegisterSpec] = PLANT_REGISTER_MAP) -> int:
    # one register at least: pymodbus wants a block for every table
    return max((s.address + s.count for s in specs if s.table == table), default=1)


@dataclass
class ModbusFace:
    """A pymodbus TCP server answering reads from ``feed``'s current sample.

    Transport faults for HIL rigs: ``delay_s`` holds every answer back, ``exception``
    answers every read with that Modbus exception code, ``stop()``/``start()`` drop and
    restore the listener on the same port (open connections are closed, as a power cut would).
    """

    feed: PlantFeed
    host: str = "127.0.0.1"
    port: int = 0
    delay_s: float = 0.0
    exception: ExcCodes | None = None
    reads: int = 0  # requests answered with data, for rigs and tests
    # what the registers hold; the pump's by default, a capsule's for its simulators
    register_map: Sequence[RegisterSpec] = PLANT_REGISTER_MAP
    # set: Modbus RTU on this serial device (a pty of socat's in rigs) instead of TCP
    serial_port: str = ""
    baudrate: int = 115_200
    _server: ModbusTcpServer | ModbusSerialServer | None = field(default=None, repr=False)
    _serving: asyncio.Task[None] | None = field(default=None, repr=False)
    _image_step: int = field(default=-1, repr=False)
    _image: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            raise HilError("the Modbus server is already running")
        device = SimDevice(
            id=DEVICE_ID,
            simdata=(
                [SimData(0, count=1, datatype=DataType.BITS)],
                [SimData(0, count=1, datatype=DataType.BITS)],
                [SimData(0, count=self._size("holding"), datatype=DataType.REGISTERS)],
                [SimData(0, count=self._size("input"), datatype=DataType.REGISTERS)],
            ),
            action=self._on_access,
        )
        if self.serial_port:
            serial = ModbusSerialServer(
                device, framer=FramerType.RTU, port=self.serial_port, baudrate=self.baudrate
            )
            self._serving = asyncio.create_task(serial.serve_forever(), name="modbus-rtu")
            self._server = serial
            log.info("Modbus RTU server on %s (device id %d)", self.serial_port, DEVICE_ID)
            return
        if not self.port:  # picked once, outside the ephemeral range: a drop's restart reuses it
            self.port = free_port(self.host)
        server = ModbusTcpServer(device, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:  # pymodbus reports a failed bind this way
            raise HilError(
                f"cannot listen for Modbus on {self.host}:{self.port}",
                hint="pick another --modbus-port, or 0 for any free port",
            ) from err
        listener = server.transport
        if not isinstance(listener, asyncio.Server):  # pymodbus's TCP listener always is
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus's shutdown() is unannotated
            raise HilError(f"pymodbus returned a {type(listener).__name__} listener")
        self.port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        log.info("Modbus server on %s:%d (device id %d)", self.host, self.port, DEVICE_ID)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus is untyped here
        if self._serving is not None:
            task, self._serving = self._serving, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def drop_for(self, seconds: float) -> None:
        """Stop listening for ``seconds`` (a PLC reboot or a pulled cable), then come back."""
        await self.stop()
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.start()

    def _size(self, table: str) -> int:
        return _table_size(table, self.register_map)

    def _refresh_image(self) -> dict[str, list[int]]:
        sample = self.feed.sample
        if sample.step != self._image_step:
            image = {t: [0] * self._size(t) for t in ("holding", "input")}
            for spec in self.register_map:
                regs = encode_value(spec, sample.values[spec.signal])
                image[spec.table][spec.address : spec.address + spec.count] = regs
            self._image, self._image_step = image, sample.step
        return self._image

    async def _on_access(
        self,
        fc: int,
        start: int,
        _address: int,
        _count: int,
        regs: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # pymodbus passes the whole block (``regs[0]`` is address ``start``); filling it
        # from the image answers this request and any other in the same block
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.exception is not None:
            return ExcCodes(self.exception)  # a caller may have set a plain int
        if set_values is not None:  # the plant's image is read-only
            return ExcCodes.ILLEGAL_FUNCTION
        table = _FC_TABLE.get(fc)
        if table is not None:
            src = self._refresh_image()[table]
            n = min(len(regs), len(src) - start)
            regs[:n] = src[start : start + n]
            self.reads += 1
        return None


@dataclass
class PlantServer:
    """``async with PlantServer() as srv:`` runs the plant inside the caller's event loop.

    Serves Modbus TCP on ``srv.port`` (``modbus_port=0`` picks a free port), and also
    OPC UA when ``opcua_port`` is set and MQTT when ``mqtt_url`` is set. ``replay`` serves a
    SKAB CSV (looping) instead of the model; ``speed`` is plant seconds per wall second.
    """

    modbus_port: int = 0
    host: str = "127.0.0.1"
    opcua_port: int | None = None
    mqtt_url: str | None = None
    period_s: float = 0.1
    speed: float = 1.0
    seed: int = 0
    faults: Sequence[Fault] = DEFAULT_FAULTS
    replay: Path | None = None
    source: ValueSource | None = None  # overrides seed/faults/replay when given
    feed: PlantFeed = field(init=False)
    modbus: ModbusFace = field(init=False)
    faces: list[Any] = field(init=False, default_factory=list)  # the OPC UA / MQTT faces
    _stack: contextlib.AsyncExitStack | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        """The Modbus TCP port actually listening."""
        return self.modbus.port

    @property
    def values(self) -> dict[str, float]:
        """The values every face serves right now."""
        return dict(self.feed.sample.values)

    @property
    def pump(self) -> PumpPlant | None:
        """The SIMULATED pump behind the faces (None when replaying a file or serving
        another source): its state beyond the values, e.g. how far it is from settled."""
        return self.source.plant if isinstance(self.source, ModelSource) else None

    def describe(self) -> str:
        return self.feed.source.describe()

    async def __aenter__(self) -> PlantServer:
        if self._stack is not None:
            raise HilError("PlantServer is already running")
        if self.source is None:
            self.source = (
                ReplaySource.from_file(self.replay)
                if self.replay is not None
                else ModelSource(PumpPlant(seed=self.seed, faults=self.faults))
            )
        self.feed = PlantFeed(self.source, period_s=self.period_s, speed=self.speed)
        self.modbus = ModbusFace(self.feed, self.host, self.modbus_port)
        async with contextlib.AsyncExitStack() as stack:
            await self.modbus.start()
            stack.push_async_callback(self.modbus.stop)
            if self.opcua_port is not None:
                from hil_tests.opcua_server import OpcUaFace  # noqa: PLC0415 - asyncua is heavy

                opcua = OpcUaFace(self.feed, self.host, self.opcua_port)
                self.faces.append(await stack.enter_async_context(opcua))
            if self.mqtt_url is not None:
                from hil_tests.mqtt_publisher import MqttFace  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

                mqtt = MqttFace(self.feed, self.mqtt_url)
                self.faces.append(await stack.enter_async_context(mqtt))
            # the clock starts once every face is up (asyncua's init blocks the loop a while)
            task = asyncio.create_task(self.feed.run(), name="plant-feed")
            stack.push_async_callback(stop_all, [task])
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
