"""Serves the SIMULATED plant (or a SKAB replay) over Modbus TCP with pymodbus's server.

Registers are refreshed from an in-memory image on every read (a pymodbus ``SimDevice``
action); the image is updated by a task stepping the plant at ``period_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from hil_tests.errors import HilError
from hil_tests.plant import SIGNALS, PumpPlant
from hil_tests.skab import read_skab

__all__ = ["PLANT_REGISTER_MAP", "PlantServer", "RegisterSpec", "agent_modbus_section"]

log = logging.getLogger(__name__)
_HOLDING, _INPUT = 3, 4  # Modbus function codes that read each table


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where one signal lives: table, address, type and the scaling the agent must undo."""

    signal: str
    table: str  # "holding" | "input"
    address: int
    type: str  # "float32" (big-endian words) | "int16"
    scale: float  # engineering value = raw * scale
    unit: str


def _build_map() -> tuple[RegisterSpec, ...]:
    specs: list[RegisterSpec] = []
    holding = 0
    for name, unit in SIGNALS.items():
        if name in ("Temperature", "Thermocouple"):  # scaled integers, as many PLCs do
            idx = 0 if name == "Temperature" else 1
            specs.append(RegisterSpec(name, "input", idx, "int16", 0.1, unit))
        else:
            specs.append(RegisterSpec(name, "holding", holding, "float32", 1.0, unit))
            holding += 2
    return tuple(specs)


PLANT_REGISTER_MAP: tuple[RegisterSpec, ...] = _build_map()


def agent_modbus_section(host: str, port: int, *, poll_interval_ms: int = 100) -> str:
    """The ``[[modbus]]`` TOML an agent needs to read this server (used by the demo)."""
    lines = [
        "[[modbus]]",
        'name = "pump-plc"',
        f'host = "{host}"',
        f"port = {port}",
        "device_id = 1",
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
            f"scale = {s.scale}",
            f'unit = "{s.unit}"',
            "",
        ]
    return "\n".join(lines)


def _encode(spec: RegisterSpec, value: float) -> list[int]:
    if spec.type == "float32":
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        return [hi, lo]
    raw = max(-32768, min(32767, round(value / spec.scale)))
    return [raw & 0xFFFF]


@dataclass
class PlantServer:
    """``async with PlantServer(port=0) as srv:`` serves the plant on 127.0.0.1:srv.port.

    ``replay`` serves a SKAB CSV's rows in order (looping) instead of the physics model.
    ``speed`` multiplies simulated time (10 = ten plant seconds per wall second).
    """

    port: int = 0
    host: str = "127.0.0.1"
    period_s: float = 0.1
    speed: float = 1.0
    seed: int = 0
    replay: Path | None = None
    plant: PumpPlant | None = None
    values: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    _image: dict[int, list[int]] = field(
        default_factory=lambda: {_HOLDING: [0] * 64, _INPUT: [0] * 16}
    )
    _server: ModbusTcpServer | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _rows: Iterator[dict[str, float]] | None = None

    async def __aenter__(self) -> PlantServer:
        if self._server is not None:
            raise HilError("PlantServer is already running")
        if self.port == 0:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        if self.replay is not None:
            rows = [r.values for r in read_skab(self.replay)]
            if not rows:
                raise HilError(f"{self.replay} has no rows to replay")
            self._rows = itertools.cycle(rows)
        elif self.plant is None:
            self.plant = PumpPlant(seed=self.seed)
        self._update()
        device = SimDevice(
            id=1,
            simdata=(
                [SimData(0, count=1, datatype=DataType.BITS)],
                [SimData(0, count=1, datatype=DataType.BITS)],
                [
                    SimData(
                        0, count=len(self._image[_HOLDING]), values=0, datatype=DataType.REGISTERS
                    )
                ],
                [SimData(0, count=len(self._image[_INPUT]), values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._on_access,
        )
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        self._tasks = [
            asyncio.create_task(self._server.serve_forever(), name=f"modbus-server:{self.port}"),
            asyncio.create_task(self._run_plant(), name="plant"),
        ]
        await self._wait_listening()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus is untyped here
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._server = None

    async def _wait_listening(self) -> None:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            w.close()
            await w.wait_closed()
            return
        raise HilError(f"Modbus server did not start on {self.host}:{self.port}")

    async def _on_access(
        self, fc: int, start: int, _address: int, _count: int, regs: list[int], _set: Any
    ) -> None:
        src = self._image.get(fc)
        if src is not None:
            for i in range(len(regs)):
                if start + i < len(src):
                    regs[i] = src[start + i]

    async def _run_plant(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self._update()

    def _update(self) -> None:
        if self._rows is not None:
            self.values = dict(next(self._rows))
        else:
            assert self.plant is not None
            self.values = self.plant.step(self.period_s * self.speed)
        self.steps += 1
        for spec in PLANT_REGISTER_MAP:
            fc = _HOLDING if spec.table == "holding" else _INPUT
            regs = _encode(spec, self.values[spec.signal])
            self._image[fc][spec.address : spec.address + len(regs)] = regs
