"""Modbus TCP connector: polls holding/input registers with pymodbus's async client.

Adjacent and nearly adjacent tags are read in one request (span merging, up to the
protocol's 125 registers); a failing span is counted per tag and never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from agent.backoff import Backoff
from agent.config import ModbusDeviceConfig, ModbusTag
from agent.connectors.base import Emit, Sample
from agent.errors import DeviceRefused, DeviceTimeout

__all__ = [
    "MAX_REGISTERS_PER_READ",
    "ModbusConnector",
    "Span",
    "decode",
    "one_request_per_tag",
    "plan_spans",
]

log = logging.getLogger(__name__)
MAX_REGISTERS_PER_READ = 125  # Modbus Application Protocol v1.1b3 §6.3: 1..125 registers

_FORMATS = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "float64": ">d",
}


@dataclass(frozen=True, slots=True)
class Span:
    """One read request: ``count`` registers of ``table`` from ``start``, feeding ``tags``."""

    table: str
    start: int
    count: int
    tags: tuple[ModbusTag, ...]


def plan_spans(
    tags: Sequence[ModbusTag], max_gap: int, max_count: int = MAX_REGISTERS_PER_READ
) -> list[Span]:
    """Group tags into as few reads as possible without skipping more than ``max_gap``."""
    spans: list[Span] = []
    for table in ("holding", "input"):
        group = sorted((t for t in tags if t.table == table), key=lambda t: t.address)
        cur: list[ModbusTag] = []
        start = end = 0
        for t in group:
            t_end = t.address + t.count
            if cur and t.address - end <= max_gap and max(end, t_end) - start <= max_count:
                cur.append(t)
                end = max(end, t_end)
                continue
            if cur:
                spans.append(Span(table, start, end - start, tuple(cur)))
            cur, start, end = [t], t.address, t_end
        if cur:
            spans.append(Span(table, start, end - start, tuple(cur)))
    return spans


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    pymodbus awaits replies with ``asyncio.wait_for``, which on Python 3.11 can swallow a
    cancellation that races with the reply (cpython gh-86296), and it turns one that lands
    mid-request into a ModbusIOException. The task still counts the request, so ask it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def one_request_per_tag(tags: Sequence[ModbusTag]) -> list[Span]:
    """The naive plan (what most gateways do): a read per tag. The benchmark's baseline."""
    return [Span(t.table, t.address, t.count, (t,)) for t in tags]


def decode(registers: Sequence[int], tag: ModbusTag) -> float:
    """Registers -> engineering value: word and byte order, type, then scale and offset."""
    words = list(registers)
    if tag.word_order == "little":
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if tag.byte_order == "little":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    (value,) = struct.unpack(_FORMATS[tag.type], raw)
    return float(value) * tag.scale + tag.offset


@dataclass
class ModbusConnector:
    """Polls one Modbus TCP device on its own interval; reconnects with jittered backoff."""

    config: ModbusDeviceConfig
    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)
    errors: Counter[str] = field(default_factory=Counter)  # per tag: exceptions + timeouts
    polls: int = 0

    @property
    def name(self) -> str:
        return f"modbus[{self.config.name}]"

    async def run(self, emit: Emit) -> None:
        cfg = self.config
        spans = plan_spans(cfg.tags, cfg.max_gap)
        interval = cfg.poll_interval_ms / 1000
        attempt = 0
        while True:
            client = AsyncModbusTcpClient(
                cfg.host,
                port=cfg.port,
                timeout=cfg.timeout_ms / 1000,
                retries=0,
                reconnect_delay=0,  # we own reconnection, with jitter
            )
            try:
                if not await client.connect():
                    raise DeviceTimeout(f"{self.name}: cannot connect to {cfg.host}:{cfg.port}")
                attempt = 0
                next_poll = time.monotonic()
                while True:
                    await emit(await self.poll_once(client, spans))
                    self.polls += 1
                    _raise_if_cancelled()
                    next_poll += interval
                    await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
                    if not client.connected:
                        raise DeviceTimeout(f"{self.name}: connection lost")
            except (DeviceTimeout, ConnectionError, OSError) as err:
                delay = self.backoff.delay(attempt, self.rng)
                log.warning("%s: %s; reconnecting in %.2fs", self.name, err, delay)
                attempt += 1
                await asyncio.sleep(delay)
            finally:
                client.close()

    async def poll_once(self, client: AsyncModbusTcpClient, spans: Sequence[Span]) -> list[Sample]:
        """Read every span once; a refused or timed-out span is counted per tag and skipped."""
        out: list[Sample] = []
        now = time.time_ns()  # one timestamp per poll cycle: its tags form one model row
        for span in spans:
            try:
                regs = await self._read(client, span)
            except (DeviceRefused, DeviceTimeout) as err:
                for t in span.tags:
                    self.errors[t.name] += 1
                log.warning("%s: %s", self.name, err)
                if isinstance(err, DeviceTimeout) and not client.connected:
                    raise
                continue
            for t in span.tags:
                off = t.address - span.start
                out.append(Sample(t.name, decode(regs[off : off + t.count], t), t.unit, now))
        return out

    async def _read(self, client: AsyncModbusTcpClient, span: Span) -> list[int]:
        read = (
            client.read_holding_registers
            if span.table == "holding"
            else client.read_input_registers
        )
        try:
            rr = await read(span.start, count=span.count, device_id=self.config.device_id)
        except ModbusException as err:
            # pymodbus turns a cancellation that lands mid-request into a ModbusIOException;
            # hand the cancellation back, or the connector task could never be stopped
            _raise_if_cancelled()
            raise DeviceTimeout(
                f"{span.table} {span.start}+{span.count}: no answer ({err})"
            ) from err
        if rr.isError():
            raise DeviceRefused(
                f"{span.table} {span.start}+{span.count}: exception code "
                f"{getattr(rr, 'exception_code', '?')}"
            )
        regs: list[int] = list(rr.registers)
        return regs
