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
TCP gateway. A poll whose first read times out reads nothing more (one timeout, not one
per span), and so does a poll in which two spans in a row time out after the device had
answered: it went silent mid-poll (a link that died), and every further span would cost a
timeout (pymodbus closes the connection at the fourth, and the outage would read as a drop).
The device's timeout gap then starts when its first unanswered span timed out. A TCP
connection on which nothing answered is closed and opened anew: it may be
half-open (a gateway or proxy whose backend died, a NAT that dropped its state) and would
never answer again, while pymodbus drops it only after three unanswered requests, which
the breaker spaces out over ~18 s. On a shared connection that waits until one of the
device's silent polls finds that no device on the link answered since its previous one.

Devices on one link share one client and take turns, one request at a time (FIFO): RTU
devices that name the same ``serial_port`` (one bus), and by default TCP devices on one
host:port (one connection: many PLCs and gateways take only a few; ``share_connection =
false`` opts out). The breaker is what keeps a dead unit behind the link from eating the
others' turns: it costs them one timeout per open period.

What was not read is a source gap in the signed proof, never only a metric: a tag the device
refuses is ``exception:N`` under the tag's name; a poll nobody answered (and each poll the
open breaker skips) is ``timeout`` under the device's name, a lost or refused connection
``disconnected``; a span that times out while the others answer, ``timeout`` per tag.
A failed read emits no reading (a made-up value would be signed as if read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from agent.backoff import LINK, Backoff
from agent.config import BIT_TABLES, ModbusDeviceConfig, ModbusTag
from agent.connectors.base import QUALITY_GOOD, Emit, Expect, Sample, SourceGap
from agent.connectors.common import SourceWatch
from agent.errors import DeviceRefused, DeviceTimeout
from attestation.cancel import reraise_if_cancelling

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
_new_tuple = tuple.__new__  # a named tuple built from a plain one without a Python frame
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
    # how its registers become values, worked out once (``SpanDecoder``): not part of its identity
    decoder: SpanDecoder = field(init=False, repr=False, compare=False, hash=False)
    # its tags' names and units, for ``samples``: not part of its identity either
    names: tuple[str, ...] = field(init=False, repr=False, compare=False, hash=False)
    units: tuple[str, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", SpanDecoder.plan(self))
        object.__setattr__(self, "names", tuple(t.name for t in self.tags))
        object.__setattr__(self, "units", tuple(t.unit for t in self.tags))

    def samples(self, registers: Sequence[int], ts_ns: int) -> list[Sample]:
        """``[Sample(t.name, v, t.unit, ts_ns) for t, v in zip(tags, values)]``, each built
        in C (``tuple.__new__`` over ``zip``: no Python frame a sample, ~2x faster for a
        100-tag span); the same tuples, Good quality."""
        values = self.values(registers)
        if len(values) != len(self.tags):
            raise ValueError(f"{len(values)} values for {len(self.tags)} tags")
        rows = zip(self.names, values, self.units, repeat(ts_ns), repeat(QUALITY_GOOD))
        return list(map(_new_tuple, repeat(Sample), rows))

    def values(self, registers: Sequence[int]) -> list[float]:
        """Every tag's engineering value, in ``tags`` order (what ``decode`` gives each)."""
        return self.decoder.values(self, registers)


@dataclass(frozen=True, slots=True)
class SpanDecoder:
    """A span's registers -> its tags' values in one ``struct`` call, when every tag is a
    register type in the big-endian word and byte order, in address order without overlap
    (a gateway's usual map); otherwise ``decode`` tag by tag. Either way each value is
    ``float(raw) * scale + offset``, the same operations as ``decode``: the same bits."""

    fmt: struct.Struct | None  # None: decode tag by tag
    scales: tuple[float, ...] = ()  # each tag's, in order (the struct path's)
    offsets: tuple[float, ...] = ()

    @classmethod
    def plan(cls, span: Span) -> SpanDecoder:
        if span.table in BIT_TABLES:
            return cls(None)
        out, end = [">"], span.start
        for t in span.tags:
            simple = t.word_order == "big" and t.byte_order == "big" and t.type in _FORMATS
            if not simple or t.address < end:
                return cls(None)
            out.append(f"{2 * (t.address - end)}x" if t.address > end else "")
            out.append(_FORMATS[t.type][1])
            end = t.address + t.count
        out.append(f"{2 * (span.start + span.count - end)}x")
        scales = tuple(t.scale for t in span.tags)
        return cls(struct.Struct("".join(out)), scales, tuple(t.offset for t in span.tags))

    def values(self, span: Span, registers: Sequence[int]) -> list[float]:
        # an answer with more registers than asked is read as before: tag by tag, the extra
        # ignored (and one with fewer fails in ``decode`` as before)
        if self.fmt is None or len(registers) != span.count:
            start = span.start
            return [
                decode(registers[t.address - start : t.address - start + t.count], t)
                for t in span.tags
            ]
        raw = self.fmt.unpack(struct.pack(f">{span.count}H", *registers))
        return [
            float(v) * scale + offset
            for v, scale, offset in zip(raw, self.scales, self.offsets, strict=True)
        ]


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


class DeviceSilent(DeviceTimeout):
    """Nothing answered a poll on a connection that is still open: it is closed to be opened
    anew, and the outage stays a ``timeout`` (the device was silent, the link did not drop)."""


@dataclass
class SharedLink:
    """One connection that several devices share: an RTU serial line, or a TCP connection
    to one host:port. One client, one request at a time: ``lock`` is FIFO, so the devices'
    requests take turns (a device waiting for its answer holds the link for at most its
    timeout, and its breaker bounds how often that happens)."""

    client: Client
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    answers: int = 0  # polls any device on the link got an answer to (see ``_link_is_stale``)


_LINKS: dict[str, SharedLink] = {}


class _Brief(ModbusPDU):
    """A read response whose ``str`` names its size, not every value: pymodbus formats each
    response it decodes for a debug line (``DecodePDU.decode``: ``str(pdu)`` is built before
    ``Log.debug`` checks the level), ~11 us for 125 registers, ~0.15 us a tag read. Mixed
    into the four read responses and given to each client through pymodbus's documented
    ``register`` (a custom response class for a function code); decoding is theirs."""

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id="
            f"{self.transaction_id}, {len(self.registers)} registers, {len(self.bits)} bits)"
        )


class _HoldingRegisters(_Brief, ReadHoldingRegistersResponse):
    pass


class _InputRegisters(_Brief, ReadInputRegistersResponse):
    pass


class _Coils(_Brief, ReadCoilsResponse):
    pass


class _DiscreteInputs(_Brief, ReadDiscreteInputsResponse):
    pass


_BRIEF_RESPONSES = (_HoldingRegisters, _InputRegisters, _Coils, _DiscreteInputs)


def _new_client(cfg: ModbusDeviceConfig) -> Client:
    client = _bare_client(cfg)
    for response in _BRIEF_RESPONSES:
        client.register(response)
    return client


def _bare_client(cfg: ModbusDeviceConfig) -> Client:
    if cfg.transport == "rtu":
        return AsyncModbusSerialClient(
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
    return AsyncModbusTcpClient(
        cfg.host,
        port=cfg.port,
        timeout=cfg.timeout_ms / 1000,
        retries=0,
        reconnect_delay=0,  # we own reconnection, with jitter
    )


def _take_link(cfg: ModbusDeviceConfig) -> SharedLink | None:
    """The link ``cfg`` shares (made by its first user), or None: a connection of its own.
    The first user's settings make the client (``check-config`` refuses a difference)."""
    key = cfg.link
    if key is None:
        return None
    link = _LINKS.get(key)
    if link is None:
        link = _LINKS[key] = SharedLink(_new_client(cfg))
    link.users += 1
    return link


def _release_link(cfg: ModbusDeviceConfig, link: SharedLink) -> None:
    link.users -= 1
    if link.users == 0:
        if cfg.link is not None and _LINKS.get(cfg.link) is link:
            del _LINKS[cfg.link]
        link.client.close()


@dataclass
class ModbusConnector:
    """Polls one Modbus device, group by group; reconnects with jittered backoff."""

    config: ModbusDeviceConfig
    backoff: Backoff = LINK
    rng: random.Random = field(default_factory=random.Random)
    errors: Counter[str] = field(default_factory=Counter)  # per tag: exceptions + timeouts
    timeouts: Counter[str] = field(default_factory=Counter)  # per tag
    exception_codes: Counter[tuple[str, int]] = field(default_factory=Counter)  # (tag, code)
    polls: int = 0
    peer_up: bool | None = None  # the device answered its last poll (None: not polled yet)
    reconnects: int = 0  # connection attempts in a row since the device last answered
    reconnect_at: float = 0.0  # time.monotonic() of the next connection attempt
    breaker: Breaker = field(init=False)
    _lock: asyncio.Lock | None = field(default=None, init=False)
    _split: set[Span] = field(default_factory=set, init=False)  # refused merged spans
    _answered: bool = field(default=False, init=False)  # the device answered the last poll
    _replied: bool = field(default=False, init=False)  # anything came back (a gateway's 10/11 too)
    _went_silent_at: int | None = field(default=None, init=False)  # answered, then silent
    watch: SourceWatch = field(default_factory=SourceWatch)  # the device and tags not read
    _expect: Expect | None = field(default=None, init=False)
    _link: SharedLink | None = field(default=None, init=False)  # None: a connection of its own
    _answers_seen: int | None = field(default=None, init=False)  # link.answers at a silent poll

    def bind_expect(self, expect: Expect) -> None:
        """The runtime covers each request's samples before it goes out (ADR 0017)."""
        self._expect = expect

    def __post_init__(self) -> None:
        cfg = self.config
        self.breaker = Breaker(cfg.breaker_failures, cfg.breaker_open_ms / 1000)

    def reconnect_delay(self, now: float) -> float:
        """Seconds until the next connection attempt: the backoff grows with every attempt
        since the device last answered a poll (a host that takes TCP connections but never
        answers Modbus backs off like one that refuses them), and an open breaker holds the
        device alone until its open period ends."""
        delay = self.backoff.delay(self.reconnects, self.rng)
        return max(delay, self.breaker.open_until - now)

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
        while True:
            link = _take_link(cfg)
            client = link.client if link is not None else _new_client(cfg)
            self._lock = link.lock if link is not None else None
            self._link, self._answers_seen = link, None
            try:
                await self._connect(client)
                await self._poll_loop(client, emit)
            except (DeviceTimeout, ConnectionError, OSError) as err:
                self.peer_up = False
                reraise_if_cancelling()  # a stop that pymodbus's connect() swallowed
                now = time.monotonic()
                delay = self.reconnect_delay(now)
                self.reconnect_at = now + delay
                log.warning("%s: %s; reconnecting in %.2fs", self.name, err, delay)
                self.reconnects += 1
                reason = "timeout" if isinstance(err, DeviceSilent) else "disconnected"
                await emit([], [self.watch.failed(cfg.name, reason)])
                await asyncio.sleep(delay)
                await emit([], [self.watch.failed(cfg.name, reason)])  # the wait too
            finally:
                if link is not None:
                    _release_link(cfg, link)
                else:
                    client.close()

    async def _connect(self, client: Client) -> None:
        """Connect, unless the link is up; on a shared link, one device connects for all
        (the others wait their turn and find it connected)."""
        if client.connected:
            return
        cfg = self.config
        async with self._lock or contextlib.nullcontext():
            if not client.connected and not await client.connect():
                where = cfg.serial_port if cfg.transport == "rtu" else f"{cfg.host}:{cfg.port}"
                raise DeviceTimeout(f"cannot connect to {where}")

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
                # the device should have been read now: the open breaker's silence is a gap
                await emit([], [self.watch.failed(self.config.name, "timeout")])
                continue
            gaps: list[SourceGap] = []
            try:
                samples = await self.poll_once(client, spans, gaps)
            except DeviceTimeout:
                # unanswered, and the connection went with it (pymodbus closes a TCP
                # connection whose request timed out): a failure for the breaker all the same
                self.breaker.record(False, time.monotonic())
                raise
            self.peer_up = (self._answered and self._went_silent_at is None) or not spans
            self.breaker.record(self.peer_up, time.monotonic())
            if self._replied and self._link is not None:
                self._link.answers += 1
                self._answers_seen = None
            if self.peer_up:
                self.reconnects = 0
            if samples or gaps:
                await emit(samples, gaps)
            self.polls += 1
            reraise_if_cancelling()
            if not client.connected:
                raise DeviceTimeout(f"{self.name}: connection lost")
            silent = not self._replied or self._went_silent_at is not None
            if silent and spans and self._link_is_stale():
                client.close()
                raise DeviceSilent(f"{self.name}: nothing answered; opening a new connection")

    def _link_is_stale(self) -> bool:
        """After a poll nobody answered: should the (TCP) connection be opened anew? Yes for
        a connection of its own (or a shared one with no other user); on a shared one, when
        no device on it got an answer since this device's previous silent poll (a dead unit
        behind a live gateway keeps it)."""
        if self.config.transport == "rtu":  # a serial line cannot be half-open
            return False
        link = self._link
        if link is None or link.users == 1:
            return True
        if self._answers_seen == link.answers:
            return True
        self._answers_seen = link.answers
        return False

    async def poll_once(
        self, client: Client, spans: Sequence[Span], gaps: list[SourceGap] | None = None
    ) -> list[Sample]:
        """Read every span once; a refused or timed-out span is counted per tag and skipped,
        and becomes a source gap in ``gaps`` (see the module's docstring).

        A merged span refused with an exception is split into a read per tag (now and from
        then on), so one bad address costs only its own tag.
        """
        out: list[Sample] = []
        now = time.time_ns()  # one timestamp per poll cycle: its tags form one model row
        self._answered = self._replied = False
        self._went_silent_at = unanswered_since = None  # a timeout since the last answer
        watch, found = self.watch, [] if gaps is None else gaps
        timed_out: list[ModbusTag] = []
        todo = list(spans)
        asked = 0  # samples this poll's requests so far may yield
        while todo:
            span = todo.pop(0)
            if self._split and span in self._split:  # hashing a span hashes its tags
                todo[:0] = one_request_per_tag(span.tags)
                continue
            asked += len(span.tags)
            try:
                regs = await self._read(client, span, asked)
            except ExceptionResponse as err:
                self._refused(span, err, todo, found, now)
                unanswered_since = None
                continue
            except DeviceTimeout as err:
                log.warning("%s: %s", self.name, err)
                if not client.connected:
                    self._count_timeouts(span.tags, timed_out)
                    raise  # run() states the outage (disconnected) until it reconnects
                if self._answered and unanswered_since is None:
                    # one span unanswered among answers (an address the device ignores)
                    unanswered_since = time.time_ns()
                    self._count_timeouts(span.tags, timed_out)
                    continue
                # nothing answered yet, or a second span in a row unanswered: the device is
                # silent, and each further span would hold the (maybe shared) link for one
                # more timeout
                self._count_timeouts([t for s in (span, *todo) for t in s.tags], timed_out)
                self._went_silent_at = unanswered_since
                break
            unanswered_since = None
            self._answered = self._replied = True
            out += span.samples(regs, now)
            if watch:  # something was down: what answered now is up again
                found.extend(g for t in span.tags if (g := watch.ended(t.name, now)))
        if timed_out and not self._answered:  # nobody answered: the device is silent
            found.append(watch.failed(self.config.name, "timeout", now))
        else:
            found.extend(watch.failed(t.name, "timeout", now) for t in timed_out)
            if self._answered and (g := watch.ended(self.config.name, now)):
                found.append(g)
            if self._went_silent_at is not None:  # answered, then silent from then on
                found.append(watch.failed(self.config.name, "timeout", self._went_silent_at))
        return out

    def _refused(
        self,
        span: Span,
        err: ExceptionResponse,
        todo: list[Span],
        found: list[SourceGap],
        now: int,
    ) -> None:
        """An exception answer: a merged span is split into a read per tag (put first in
        ``todo``); a single tag's refusal is counted and becomes its source gap."""
        self._replied = True
        self._answered |= err.code not in GATEWAY_NO_TARGET
        if len(span.tags) > 1:
            log.warning("%s: %s; reading its tags one by one", self.name, err)
            self._split.add(span)
            todo[:0] = one_request_per_tag(span.tags)
            return
        (tag,) = span.tags
        self.errors[tag.name] += 1
        if self.exception_codes[tag.name, err.code] == 0:  # log once per tag and code
            log.warning("%s: %s: %s", self.name, tag.name, err)
        self.exception_codes[tag.name, err.code] += 1
        found.append(self.watch.failed(tag.name, f"exception:{err.code}", now))

    def _count_timeouts(self, tags: Sequence[ModbusTag], timed_out: list[ModbusTag]) -> None:
        for t in tags:
            self.errors[t.name] += 1
            self.timeouts[t.name] += 1
        timed_out.extend(tags)

    async def _read(self, client: Client, span: Span, asked: int) -> list[int]:
        """One request; ``asked``: the samples of this poll up to and including this span,
        which the runtime's durable seq mark covers before the request goes out (ADR 0017).
        On a shared link that happens once the link is this device's: a device waiting its
        turn has nothing in flight, so a kill then states nothing of it lost."""
        read = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[span.table]
        try:
            async with self._lock or contextlib.nullcontext():  # shared: one at a time
                if self._expect is not None:
                    await self._expect(asked)
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
