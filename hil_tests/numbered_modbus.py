"""A Modbus TCP server that numbers every read of every register, for loss accounting.

Units 1..``units`` each hold ``registers`` holding registers; the k-th read of a register
answers k (uint16, 1-based), so every sample a client receives is unique and the server knows
exactly what it produced and when. ``factoryops bench crash`` and the kill -9 tests compare
that with what a hub accepted: lost, duplicated, and what the signed gap records admit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimAction, SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from hil_tests.errors import HilError

__all__ = ["NumberedModbus", "numbered_agent_sections", "signal_name"]

_READ_HOLDING = 3
_MAX_READS = 0xFFFF  # a uint16 register: beyond this a number would repeat


def signal_name(unit: int, register: int) -> str:
    return f"u{unit:02d}r{register:02d}"


def numbered_agent_sections(
    host: str, port: int, units: int, registers: int, poll_interval_ms: int
) -> str:
    """The ``[[modbus]]`` TOML for an agent polling every unit of this server."""
    lines: list[str] = []
    for unit in range(1, units + 1):
        lines += [
            "[[modbus]]",
            f'name = "unit{unit:02d}"',
            f'host = "{host}"',
            f"port = {port}",
            f"device_id = {unit}",
            f"poll_interval_ms = {poll_interval_ms}",
            "timeout_ms = 1000",
            "",
        ]
        for reg in range(registers):
            lines += [
                "[[modbus.tags]]",
                f'name = "{signal_name(unit, reg)}"',
                f"address = {reg}",
                'type = "uint16"',
                "",
            ]
    return "\n".join(lines)


@dataclass
class NumberedModbus:
    """``async with NumberedModbus() as srv:`` serves on ``srv.port`` inside the caller's loop.

    ``produced[(unit, register)]`` holds the monotonic time of each read, in order: read k
    answered k. Only reads of holding registers are numbered; a write is refused.
    """

    units: int = 10
    registers: int = 20
    host: str = "127.0.0.1"
    port: int = 0
    produced: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    _server: ModbusTcpServer | None = field(default=None, repr=False)

    async def __aenter__(self) -> NumberedModbus:
        devices = [
            SimDevice(
                id=unit,
                simdata=(
                    [SimData(0, count=1, datatype=DataType.BITS)],
                    [SimData(0, count=1, datatype=DataType.BITS)],
                    [SimData(0, count=self.registers, datatype=DataType.REGISTERS)],
                    [SimData(0, count=1, datatype=DataType.REGISTERS)],
                ),
                action=self._numberer(unit),
            )
            for unit in range(1, self.units + 1)
        ]
        for unit in range(1, self.units + 1):
            for reg in range(self.registers):
                self.produced.setdefault((unit, reg), [])
        server = ModbusTcpServer(devices, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:  # pymodbus reports a failed bind this way
            raise HilError(f"cannot listen for Modbus on {self.host}:{self.port}") from err
        listener = server.transport
        if not isinstance(listener, asyncio.Server):  # pymodbus's TCP listener always is
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus is untyped here
            raise HilError(f"pymodbus returned a {type(listener).__name__} listener")
        self.port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop answering: nothing more is produced."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus is untyped here

    @property
    def total(self) -> int:
        return sum(len(t) for t in self.produced.values())

    def _numberer(self, unit: int) -> SimAction:
        async def number(
            fc: int,
            start: int,
            address: int,
            count: int,
            regs: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            # pymodbus passes the whole block (``regs[0]`` is address ``start``)
            if set_values is not None or fc != _READ_HOLDING:
                return ExcCodes.ILLEGAL_FUNCTION
            now = time.monotonic()
            for reg in range(address, address + count):
                reads = self.produced[unit, reg]
                if len(reads) >= _MAX_READS:
                    return ExcCodes.DEVICE_FAILURE
                reads.append(now)
                regs[reg - start] = len(reads)
            return None

        return number
