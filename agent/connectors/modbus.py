"""Modbus connector (pymodbus async client): TCP, or RTU over a serial line.

Holding and input registers, coils and discrete inputs. Adjacent and nearly adjacent
tags are read in one request (span merging, up to the protocol's 125 registers or 2000
bits); a failing span is counted per tag and never stops the others, and a merged span
the device refuses (an exception response: a hole in its map, a tag past its end) is split
into a read per tag from then on, so only the refused tag goes missing. Tags poll in groups,
each on its own interval. A per-device circuit breaker leaves a device whose polls went
unanswered ``breaker_failures`` times in a row alone for ``breaker_open_ms``, then tries
once (half-open: one more silent poll opens it again): so a dead slave costs one timeout
per open period, not one per poll. An exception response is an answer, not a breaker
failure, except a gateway's "target did not respond" (codes 10 and 11): a dead slave behind a
TCP gateway. RTU devices that name the
same ``serial_port`` share one bus (one client, one request at a time), and the breaker is
what keeps a dead slave on it from eating the others' bus time.
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

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from agent.backoff import Backoff
from agent.config import BIT_TABLES, ModbusDeviceConfig, ModbusTag
from agent.connectors.base import Emit, Sample
from agent.connectors.common import reraise_if_cancelling
from agent.errors import DeviceRefused, DeviceTimeout

__all__ = [
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "ExceptionResponse",
    "ModbusConnector",
    "Span",
    "decode",
    "one_request_per_tag",
    "plan_spans",
]

log = logging.getLogger(__name__)
MAX_REGISTERS_PER_READ = 125  # Modbus Application Protocol v1.1b3 §6.3: 1..125 registers
MAX_BITS_PER_READ = 2000  # §6.1 / §6.2: 1..2000 coils or discrete inputs
Client = AsyncModbusTcpClient | AsyncModbusSerialClient

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
    """Group tags into as few reads as possible without skipping more than ``max_gap``.

    ``max_count`` bounds register reads; bit tables take up to 2000 bits a read (and the
    gap, counted in bits, may be 16x larger: a register's worth).
    """
    spans: list[Span] = []
    for table in ("holding", "input", *BIT_TABLES):
        bits = table in BIT_TABLES
        limit = MAX_BITS_PER_READ if bits else max_count
        gap = max_gap * 16 if bits else max_gap
        group = sorted((t for t in tags if t.table == table), key=lambda t: t.address)
        cur: list[ModbusTag] = []
        start = end = 0
        for t in group:
            t_end = t.address + t.count
            if cur and t.address - end <= gap and max(end, t_end) - start <= limit:
                cur.append(t)
                end = max(end, t_end)
                continue
            if cur:
                spans.append(Span(table, start, end - start, tuple(cur)))
            cur, start, end = [t], t.address, t_end
        if cur:
            spans.append(Span(table, start, end - start, tuple(cur)))
    return spans


def one_request_per_tag(tags: Sequence[ModbusTag]) -> list[Span]:
    """The naive plan (what most gateways do): a read per tag. The benchmark's baseline."""
    return [Span(t.table, t.address, t.count, (t,)) for t in tags]


def decode(registers: Sequence[int], tag: ModbusTag) -> float:
    """Registers (or one bit) -> engineering value: word and byte order, type, scale, offset."""
    if tag.table in BIT_TABLES:
        return (1.0 if registers[0] else 0.0) * tag.scale + tag.offset
    words = list(registers)
    if tag.word_order == "little":
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if tag.byte_order == "little":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    (value,) = struct.unpack(_FORMATS[tag.type], raw)
    return float(value) * tag.scale + tag.offset


GATEWAY_NO_TARGET = frozenset({10, 11})  # §7: gateway path unavailable, target no response


class ExceptionResponse(DeviceRefused):
    """The device answered a read with a Modbus exception code (§7: 2 = illegal address)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, hint="check the tag's table and address against the device")
        self.code = code


@dataclass
class Breaker:
    """Per-device circuit breaker: closed -> open after N failed polls -> half-open.

    Half-open: after the open period one poll is let through; its failure opens the breaker
    again at once, its success closes it.
    """

    failures_to_open: int
    open_s: float
    failures: int = 0
    open_until: float = 0.0
    trips: int = 0

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self.open_until = now + self.open_s
            self.failures = self.failures_to_open - 1  # half-open once the period ends
            self.trips += 1


@dataclass
class RtuBus:
    """One serial line shared by the RTU devices on it: one client, one request at a time."""

    client: AsyncModbusSerialClient
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


_BUSES: dict[str, RtuBus] = {}


def _rtu_bus(cfg: ModbusDeviceConfig) -> RtuBus:
    bus = _BUSES.get(cfg.serial_port)
    if bus is None:
        client = AsyncModbusSerialClient(
            cfg.serial_port,
            framer=FramerType.RTU,
            baudrate=cfg.baudrate,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            bytesize=cfg.bytesize,
            timeout=cfg.timeout_ms / 1000,
            retries=0,
            reconnect_delay=0,  # we own reconnection, with jitter
        )
        bus = _BUSES[cfg.serial_port] = RtuBus(client)
    bus.users += 1
    return bus


def _release_bus(cfg: ModbusDeviceConfig, bus: RtuBus) -> None:
    bus.users -= 1
    if bus.users == 0:
        _BUSES.pop(cfg.serial_port, None)
        bus.client.close()


@dataclass
class ModbusConnector:
    """Polls one Modbus device, group by group; reconnects with jittered backoff."""

    config: ModbusDeviceConfig
    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)
    errors: Counter[str] = field(default_factory=Counter)  # per tag: exceptions + timeouts
    timeouts: Counter[str] = field(default_factory=Counter)  # per tag
    exception_codes: Counter[tuple[str, int]] = field(default_factory=Counter)  # (tag, code)
    polls: int = 0
    breaker: Breaker = field(init=False)
    _lock: asyncio.Lock | None = field(default=None, init=False)
    _split: set[Span] = field(default_factory=set, init=False)  # refused merged spans
    _answered: bool = field(default=False, init=False)  # the last poll got any reply

    def __post_init__(self) -> None:
        cfg = self.config
        self.breaker = Breaker(cfg.breaker_failures, cfg.breaker_open_ms / 1000)

    @property
    def name(self) -> str:
        return f"modbus[{self.config.name}]"

    def _groups(self) -> list[tuple[float, list[Span]]]:
        """(interval s, spans) per poll group."""
        cfg = self.config
        names = sorted({t.group for t in cfg.tags})
        return [
            (
                cfg.interval_ms(g) / 1000,
                plan_spans([t for t in cfg.tags if t.group == g], cfg.max_gap),
            )
            for g in names
        ]

    async def run(self, emit: Emit) -> None:
        cfg = self.config
        attempt = 0
        while True:
            bus = _rtu_bus(cfg) if cfg.transport == "rtu" else None
            client: Client = (
                bus.client
                if bus is not None
                else AsyncModbusTcpClient(
                    cfg.host,
                    port=cfg.port,
                    timeout=cfg.timeout_ms / 1000,
                    retries=0,
                    reconnect_delay=0,  # we own reconnection, with jitter
                )
            )
            self._lock = bus.lock if bus is not None else None
            try:
                if not client.connected and not await client.connect():
                    where = cfg.serial_port if bus else f"{cfg.host}:{cfg.port}"
                    raise DeviceTimeout(f"{self.name}: cannot connect to {where}")
                attempt = 0
                await self._poll_loop(client, emit)
            except (DeviceTimeout, ConnectionError, OSError) as err:
                reraise_if_cancelling()  # a stop that pymodbus's connect() swallowed
                delay = self.backoff.delay(attempt, self.rng)
                log.warning("%s: %s; reconnecting in %.2fs", self.name, err, delay)
                attempt += 1
                await asyncio.sleep(delay)
            finally:
                if bus is not None:
                    _release_bus(cfg, bus)
                else:
                    client.close()

    async def _poll_loop(self, client: Client, emit: Emit) -> None:
        groups = self._groups()
        due = [time.monotonic()] * len(groups)
        while True:
            now = time.monotonic()
            i = min(range(len(groups)), key=due.__getitem__)
            if due[i] > now:
                await asyncio.sleep(due[i] - now)
                continue
            interval, spans = groups[i]
            due[i] += interval
            if due[i] < now:  # fell behind (a slow device): skip missed polls, no burst
                due[i] = now + interval
            if not self.breaker.allows(now):
                continue
            samples = await self.poll_once(client, spans)
            self.breaker.record(self._answered or not spans, time.monotonic())
            if samples:
                await emit(samples)
            self.polls += 1
            reraise_if_cancelling()
            if not client.connected:
                raise DeviceTimeout(f"{self.name}: connection lost")

    async def poll_once(self, client: Client, spans: Sequence[Span]) -> list[Sample]:
        """Read every span once; a refused or timed-out span is counted per tag and skipped.

        A merged span refused with an exception is split into a read per tag (now and from
        then on), so one bad address costs only its own tag.
        """
        out: list[Sample] = []
        now = time.time_ns()  # one timestamp per poll cycle: its tags form one model row
        self._answered = False
        todo = list(spans)
        while todo:
            span = todo.pop(0)
            if span in self._split:
                todo[:0] = one_request_per_tag(span.tags)
                continue
            try:
                regs = await self._read(client, span)
            except ExceptionResponse as err:
                self._answered |= err.code not in GATEWAY_NO_TARGET
                if len(span.tags) > 1:
                    log.warning("%s: %s; reading its tags one by one", self.name, err)
                    self._split.add(span)
                    todo[:0] = one_request_per_tag(span.tags)
                    continue
                (tag,) = span.tags
                self.errors[tag.name] += 1
                if self.exception_codes[tag.name, err.code] == 0:  # log once per tag and code
                    log.warning("%s: %s: %s", self.name, tag.name, err)
                self.exception_codes[tag.name, err.code] += 1
                continue
            except DeviceTimeout as err:
                for t in span.tags:
                    self.errors[t.name] += 1
                    self.timeouts[t.name] += 1
                log.warning("%s: %s", self.name, err)
                if not client.connected:
                    raise
                continue
            self._answered = True
            for t in span.tags:
                off = t.address - span.start
                out.append(Sample(t.name, decode(regs[off : off + t.count], t), t.unit, now))
        return out

    async def _read(self, client: Client, span: Span) -> list[int]:
        read = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[span.table]
        try:
            if self._lock is not None:  # a shared RTU bus: one request at a time
                async with self._lock:
                    rr = await read(span.start, count=span.count, device_id=self.config.device_id)
            else:
                rr = await read(span.start, count=span.count, device_id=self.config.device_id)
        except ModbusException as err:
            # pymodbus turns a cancellation that lands mid-request into a ModbusIOException;
            # hand the cancellation back, or the connector task could never be stopped
            reraise_if_cancelling()
            raise DeviceTimeout(
                f"{span.table} {span.start}+{span.count}: no answer ({err})"
            ) from err
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            raise ExceptionResponse(
                f"{span.table} {span.start}+{span.count}: exception code {code}", code
            )
        if span.table in BIT_TABLES:
            return [int(b) for b in rr.bits[: span.count]]
        regs: list[int] = list(rr.registers)
        return regs
