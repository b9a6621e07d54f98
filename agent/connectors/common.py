"""What the OPC UA, MQTT, serial and CSV connectors share: signal scaling, number parsing
with field-named errors, signal-list config parsing, the source-gap watch, and the reconnect
loop with jittered backoff (which states every outage of its link as a source gap).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import math
import random
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, NoReturn, Protocol, TypeVar

from agent.backoff import LINK, Backoff
from agent.connectors.base import BAD_ENCODING_LIMITS_EXCEEDED, Emit, Sample, SourceGap
from agent.errors import AgentError, ConfigError
from agent.tomlcheck import TableKeys, Where
from agent.tomlcheck import get as _get
from attestation.cancel import reraise_if_cancelling

__all__ = [
    "SCALING",
    "TIME_FORMATS",
    "ErrorCounts",
    "LinkConnector",
    "MalformedPayload",
    "Reconnector",
    "Scaling",
    "SourceWatch",
    "config_dir",
    "parse_decimal",
    "parse_list_section",
    "parse_scaling",
    "parse_signals",
    "parse_time_format",
    "parse_timestamp",
    "parse_timezone",
    "text_value",
    "to_float",
    "truncate",
]

log = logging.getLogger(__name__)
MAX_DECIMAL_CHARS = 64  # longest numeric text accepted; float() on megabytes is a DoS vector
LOG_EXCERPT_CHARS = 120  # bad input is logged truncated to this, so a log never floods
# A text value's UTF-8 bytes in a leaf: with a 128-character signal name (up to 512 bytes)
# and a 32-character unit it stays inside the 1 KiB leaf limit (LeafLimits.max_leaf_bytes).
MAX_TEXT_BYTES = 256


class MalformedPayload(AgentError):
    """Outside input (MQTT payload, serial line, CSV row) that cannot be mapped to a signal.

    ``field`` names where mapping stopped (a JSON path, a regex group, a CSV column).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            f"{field}: {message}",
            hint="fix the sender, or the signal mapping in the connector's config section",
        )
        self.field = field


@dataclass(frozen=True, slots=True)
class Scaling:
    """Raw value -> engineering value: ``raw * scale + offset``, in ``unit``."""

    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0

    def apply(self, raw: float, field: str) -> float:
        value = raw * self.scale + self.offset
        if math.isnan(raw) or math.isfinite(value):
            return value
        raise MalformedPayload(field, f"{raw!r} scaled by {self.scale} overflows a float")


SCALING = TableKeys(Scaling)  # a signal's scaling keys sit in the signal's own table


def parse_scaling(t: dict[str, Any], w: Where) -> Scaling:
    return Scaling(
        unit=_get(t, w, "unit", str, ""),
        scale=_get(t, w, "scale", float, 1.0),
        offset=_get(t, w, "offset", float, 0.0),
    )


class _Named(Protocol):
    @property
    def name(self) -> str: ...


S = TypeVar("S", bound=_Named)


def parse_signals(
    t: dict[str, Any], w: Where, parse_one: Callable[[dict[str, Any], Where], S]
) -> tuple[S, ...]:
    """``[[<section>.signals]]``: at least one, each parsed by ``parse_one``."""
    raw = _get(t, w, "signals", list, [])
    if not raw:
        raise w.error("signals", "add at least one [[...signals]] table")
    out: list[S] = []
    for i, item in enumerate(raw):
        where = w.child(f"signals[{i}]")
        if not isinstance(item, dict):
            raise w.error(f"signals[{i}]", f"expected a table, got {type(item).__name__}")
        out.append(parse_one(item, where))
    return tuple(out)  # names: unique across the gateway, checked by agent.config


def parse_list_section(
    raw: Any, w: Where, parse_one: Callable[[dict[str, Any], Where], S], keys: TableKeys
) -> tuple[S, ...]:
    """A ``[[section]]`` array of tables, each taking ``keys``; connector names must be unique
    within it."""
    if not isinstance(raw, list):
        line = w.line_of(w.prefix)
        raise ConfigError(w.path, w.prefix, line, f"write it as [[{w.prefix}]] (one per peer)")
    out: list[S] = []
    for i, t in enumerate(raw):
        where = Where(w.path, w.text, f"{w.prefix}[{i}]")
        keys.check(t, where)
        item = parse_one(t, where)
        if any(c.name == item.name for c in out):
            raise where.error("name", f"{item.name!r} names another [[{w.prefix}]] too")
        out.append(item)
    return tuple(out)


def config_dir(w: Where) -> Path:
    """Relative paths in a section are taken from the config file's folder."""
    return Path(w.path).resolve().parent


def to_float(raw: object, field: str) -> float:
    """A decoded JSON/OPC UA value -> float; booleans are 0/1, text is refused by name."""
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        try:
            return float(raw)
        except OverflowError as err:  # an int past the float range
            raise MalformedPayload(field, "integer too large for a float") from err
    raise MalformedPayload(field, f"expected a number, got {type(raw).__name__} {truncate(raw)}")


def text_value(text: str) -> tuple[str, int]:
    """A text value as a leaf records it, and the quality bits to add: a text past
    ``MAX_TEXT_BYTES`` is cut at a character boundary and marked BadEncodingLimitsExceeded
    (the reading says it is not the whole value, rather than being lost)."""
    raw = text.encode()
    if len(raw) <= MAX_TEXT_BYTES:
        return text, 0
    return raw[:MAX_TEXT_BYTES].decode(errors="ignore"), BAD_ENCODING_LIMITS_EXCEEDED


def parse_decimal(text: str, field: str) -> float:
    """Text from a serial line or CSV cell -> float; refuses long, empty or non-finite text."""
    s = text.strip()
    if not s:
        raise MalformedPayload(field, "empty where a number was expected")
    if len(s) > MAX_DECIMAL_CHARS:
        raise MalformedPayload(field, f"number text longer than {MAX_DECIMAL_CHARS} characters")
    try:
        value = float(s)
    except ValueError as err:
        raise MalformedPayload(field, f"not a number: {truncate(s)}") from err
    if not math.isfinite(value):
        raise MalformedPayload(field, f"not a finite number: {truncate(s)}")
    return value


TIME_FORMATS = ("iso8601", "unix_s", "unix_ms")  # or a strptime pattern, e.g. "%d.%m.%Y %H:%M"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_time_format(t: dict[str, Any], w: Where, key: str = "timestamp_format") -> str:
    """A timestamp format key: one of ``TIME_FORMATS`` or a ``strptime`` pattern."""
    fmt: str = _get(t, w, key, str, "iso8601")
    if fmt not in TIME_FORMATS and "%" not in fmt:
        raise w.error(key, f"{fmt!r} is not one of {', '.join(TIME_FORMATS)} or a strptime pattern")
    return fmt


def parse_timezone(t: dict[str, Any], w: Where, key: str = "timezone") -> dt.tzinfo | None:
    """The zone of times written without a UTC offset (IANA name); None: such times are bad."""
    name: str | None = _get(t, w, key, str, None)
    if name is None:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
        raise w.error(key, f"unknown time zone {name!r} (an IANA name: Europe/Berlin)") from err


def parse_timestamp(text: str, fmt: str, field: str, tz: dt.tzinfo | None = None) -> int:
    """Time text -> Unix ns, exactly (no float round trip for dates); refuses what it cannot place.

    A time without a UTC offset takes ``tz`` (the first of two readings of a repeated DST
    hour); without ``tz`` it is refused rather than guessed.
    """
    s = text.strip()
    if len(s) > MAX_DECIMAL_CHARS:
        raise MalformedPayload(field, f"time text longer than {MAX_DECIMAL_CHARS} characters")
    if fmt in ("unix_s", "unix_ms"):
        parse_decimal(s, field)  # refuses what is not a finite number, by name
        # Decimal, not float: 1764057600.25 s must be ...250000000 ns, not ...249999872
        try:
            ns = int(decimal.Decimal(s) * (10**9 if fmt == "unix_s" else 10**6))
        except decimal.InvalidOperation as err:  # text float() takes and Decimal does not
            raise MalformedPayload(field, f"not a number: {truncate(s)}") from err
        if not 0 <= ns < 2**63:
            raise MalformedPayload(field, f"{truncate(s)} is outside the time range")
        return ns
    try:
        stamp = dt.datetime.fromisoformat(s) if fmt == "iso8601" else dt.datetime.strptime(s, fmt)
    except ValueError as err:
        raise MalformedPayload(field, f"not a time in {fmt}: {truncate(s)}") from err
    if stamp.tzinfo is None:
        if tz is None:
            raise MalformedPayload(field, f"{truncate(s)} has no UTC offset (or set timezone)")
        stamp = stamp.replace(tzinfo=tz)
    try:
        ns = (stamp - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    except OverflowError as err:  # year 1 minus an offset
        raise MalformedPayload(field, f"{truncate(s)} is outside the time range") from err
    if not 0 <= ns < 2**63:
        raise MalformedPayload(field, f"{truncate(s)} is outside the time range")
    return ns


@dataclass
class ErrorCounts:
    """Bad input per signal: counted always, logged once per signal (a bad sender must
    not flood the log). ``counts`` is what the metrics read as the connector's ``errors``."""

    owner: str
    counts: dict[str, int] = field(default_factory=dict)
    _logged: set[str] = field(default_factory=set)

    def __call__(self, signal: str, err: MalformedPayload) -> None:
        self.counts[signal] = self.counts.get(signal, 0) + 1
        if signal not in self._logged:
            self._logged.add(signal)
            log.warning("%s: %s: %s (counted from now on)", self.owner, signal, err)


def truncate(raw: object, limit: int = LOG_EXCERPT_CHARS) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


@dataclass
class SourceWatch:
    """Outages per source, as source gaps: ``failed`` says a source did not produce when it
    should have and returns the outage so far (``[since, now]``, to pass to ``emit``);
    ``ended`` closes it. The window merges the repeated ``[since, now]`` of one outage into
    one range (``agent.window.WindowBuilder.note``), so reporting every failure is right."""

    clock: Callable[[], int] = time.time_ns
    _down: dict[str, tuple[int, str]] = field(default_factory=dict)

    def failed(self, source: str, reason: str, now_ns: int | None = None) -> SourceGap:
        now = self.clock() if now_ns is None else now_ns
        since, was = self._down.get(source, (now, reason))
        if was != reason:  # a new kind of failure starts a new range
            since = now
        self._down[source] = (since, reason)
        return SourceGap(source, since, max(since, now), reason)

    def ended(self, source: str, now_ns: int | None = None) -> SourceGap | None:
        """The whole outage of ``source`` up to now, if it was down; it is up from now on."""
        down = self._down.pop(source, None)
        if down is None:
            return None
        now = self.clock() if now_ns is None else now_ns
        return SourceGap(source, down[0], max(down[0], now), down[1])

    def is_down(self, source: str) -> bool:
        return source in self._down

    def __len__(self) -> int:  # how many sources are down (a cheap "any?" on the hot path)
        return len(self._down)

    def down(self, now_ns: int | None = None) -> list[SourceGap]:
        """Every outage still open, extended to now (what a poller restates each cycle)."""
        now = self.clock() if now_ns is None else now_ns
        return [SourceGap(s, t, max(t, now), r) for s, (t, r) in self._down.items()]


Session = Callable[[Callable[[], None], Emit], Awaitable[None]]


@dataclass
class Reconnector:
    """Runs a connection session again and again, waiting a jittered backoff in between.

    A session calls ``connected()`` once its peer answered, which resets the backoff. A
    session that returns, or raises one of ``transient``, is retried; anything else (a
    configuration error, a bug, a cancellation) propagates.

    Every outage of the link is a source gap named ``source`` (reason ``timeout`` when the
    peer did not answer in time, else ``disconnected``): stated when the session is lost,
    again after each wait, and closed with the session's first batch once the peer answers
    (the session is given an ``emit`` that does so), so no connector on a link can forget it.
    """

    name: str
    source: str = ""  # the name the source gaps carry (the connector's); "" -> ``name``
    backoff: Backoff = LINK
    rng: random.Random = field(default_factory=random.Random)
    watch: SourceWatch = field(default_factory=SourceWatch)
    drops: int = 0  # sessions lost or refused since start (a metric)
    sessions: int = 0  # sessions that reached their peer
    up: bool | None = None  # the peer answered and the session still runs (None: not tried)

    async def run(
        self, session: Session, transient: tuple[type[BaseException], ...], emit: Emit
    ) -> NoReturn:
        attempt = 0
        source = self.source or self.name
        closing: list[SourceGap] = []  # the outage that ended when the peer answered

        def connected() -> None:
            nonlocal attempt
            attempt = 0
            self.sessions += 1
            self.up = True
            if (gap := self.watch.ended(source)) is not None:
                closing.append(gap)

        async def emit_after_outage(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
            if closing:
                gaps = (*closing, *gaps)
                closing.clear()
            await emit(samples, gaps)

        while True:
            code = "disconnected"
            try:
                await session(connected, emit_after_outage)
                reason = "peer ended the session"
            except transient as err:
                reason = f"{type(err).__name__}: {truncate(str(err) or repr(err))}"
                if isinstance(err, TimeoutError):
                    code = "timeout"
            finally:
                self.up = False
            reraise_if_cancelling()  # a stop that the session's library swallowed
            self.drops += 1
            delay = self.backoff.delay(attempt, self.rng)
            attempt += 1
            log.warning("%s: %s; reconnecting in %.2f s", self.name, reason, delay)
            await emit([], [*closing, self.watch.failed(source, code)])
            closing.clear()
            await asyncio.sleep(delay)
            await emit([], [self.watch.failed(source, code)])  # the wait was part of it


C = TypeVar("C", bound=_Named)


@dataclass
class LinkConnector(Generic[C]):
    """A connector over one link that it re-opens after a fault (a broker session, a serial
    port): its name, its reconnect loop, and its bad-input counts per signal."""

    KIND: ClassVar[str] = ""
    config: C
    reconnector: Reconnector = field(init=False)
    bad: ErrorCounts = field(init=False)  # bad input per signal

    def __post_init__(self) -> None:
        label = f"{self.KIND} {self.config.name}"
        self.reconnector = Reconnector(label, source=self.config.name)
        self.bad = ErrorCounts(label)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def errors(self) -> dict[str, int]:  # read by the metrics
        return self.bad.counts

    @property
    def peer_up(self) -> bool | None:  # read by the metrics and the status file
        return self.reconnector.up
