"""Runs a HIL rig: the SIMULATED plant, its scheduled transport faults, and a Modbus probe.

The probe is a real pymodbus client polling the plant the way a gateway would; what it sees
(plant time, success, exception code, values) is judged by ``hil_tests.rig.evaluate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

from attestation.cancel import reraise_if_cancelling
from hil_tests.modbus_server import (
    DEVICE_ID,
    PLANT_REGISTER_MAP,
    ModbusFace,
    PlantServer,
    decode_registers,
)
from hil_tests.rig import Observation, Rig, TransportFault, Verdict, evaluate

__all__ = ["RigReport", "run_rig"]

log = logging.getLogger(__name__)
Progress = Callable[[float, float], None]  # (plant seconds done, plant seconds total)


@dataclass(frozen=True, slots=True)
class RigReport:
    rig: Rig
    verdicts: tuple[Verdict, ...]
    reads: int
    failed_reads: int

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


async def run_rig(rig: Rig, on_progress: Progress | None = None) -> RigReport:
    """Run ``rig`` to its plant duration and judge what the probe saw."""
    p = rig.plant
    observations: list[Observation] = []
    async with (
        PlantServer(
            period_s=p.period_s, speed=p.speed, seed=p.seed, faults=rig.faults, replay=p.replay
        ) as srv,
        asyncio.TaskGroup() as tg,
    ):
        tasks = [
            tg.create_task(_inject(srv, fault), name=f"transport[{i}]:{fault.kind}")
            for i, fault in enumerate(rig.transport)
        ]
        tasks.append(tg.create_task(_probe(srv, rig, observations), name="probe"))
        async for sample in srv.feed.updates():
            if on_progress is not None:
                on_progress(min(sample.t_s, p.duration_s), p.duration_s)
            if sample.t_s >= p.duration_s:
                break
        # the probe, and transport faults scheduled past the end, stop here
        for task in tasks:
            task.cancel()
    verdicts = tuple(evaluate(rig.expectations, observations))
    failed = sum(not o.ok for o in observations)
    return RigReport(rig, verdicts, len(observations), failed)


async def _at(srv: PlantServer, t_s: float) -> None:
    """Wait until the plant clock reaches ``t_s`` plant seconds."""
    if srv.feed.sample.t_s >= t_s:
        return
    async for sample in srv.feed.updates():
        if sample.t_s >= t_s:
            return


async def _inject(srv: PlantServer, fault: TransportFault) -> None:
    face: ModbusFace = srv.modbus
    await _at(srv, fault.start_s)
    log.info(
        "transport fault %s from %.1f s for %.1f s", fault.kind, fault.start_s, fault.duration_s
    )
    if fault.kind == "drop":
        await face.stop()
    elif fault.kind == "delay":
        face.delay_s = fault.delay_ms / 1000
    else:
        face.exception = ExcCodes(fault.code)
    try:
        await _at(srv, fault.start_s + fault.duration_s)
    finally:
        if fault.kind == "drop":
            await face.start()
        elif fault.kind == "delay":
            face.delay_s = 0.0
        else:
            face.exception = None


async def _probe(srv: PlantServer, rig: Rig, out: list[Observation]) -> None:
    """Poll every register of the map on a fixed wall-clock interval; record every outcome."""
    timeout = rig.probe.timeout_ms / 1000
    client: AsyncModbusTcpClient | None = None
    try:
        while True:
            if client is None or not client.connected:
                if client is not None:
                    client.close()
                client = AsyncModbusTcpClient(
                    srv.host, port=srv.port, timeout=timeout, retries=0, reconnect_delay=0
                )
                with contextlib.suppress(ModbusException, OSError):
                    await client.connect()
                reraise_if_cancelling()  # pymodbus's connect() can swallow the rig's stop
            out.append(await _read_once(client, srv.feed.sample.t_s, timeout))
            reraise_if_cancelling()  # so can a read: it then fails like a timed-out one
            await asyncio.sleep(rig.probe.poll_ms / 1000)
    finally:
        if client is not None:
            client.close()


async def _read_once(client: AsyncModbusTcpClient, t_s: float, limit_s: float) -> Observation:
    tables: dict[str, list[int]] = {}
    try:
        async with asyncio.timeout(limit_s * 2):  # pymodbus's own timeout, plus a guard
            for table in ("holding", "input"):
                size = max(s.address + s.count for s in PLANT_REGISTER_MAP if s.table == table)
                read = (
                    client.read_holding_registers
                    if table == "holding"
                    else client.read_input_registers
                )
                rr = await read(0, count=size, device_id=DEVICE_ID)
                if rr.isError():
                    return Observation(t_s, False, exception_code=int(rr.exception_code))
                if len(rr.registers) != size:
                    # a late answer to an earlier, timed-out request: never decode it as this one
                    raise ModbusException(f"{len(rr.registers)} registers, expected {size}")
                tables[table] = list(rr.registers)
    except (ModbusException, OSError, TimeoutError) as err:
        log.debug("probe read at %.1f s failed: %s", t_s, err)
        # a fresh connection next time, so stale answers in flight are dropped with this one
        client.close()
        return Observation(t_s, False)
    values = {
        s.signal: decode_registers(s, tables[s.table][s.address : s.address + s.count])
        for s in PLANT_REGISTER_MAP
    }
    return Observation(t_s, True, values=values)
