"""Serial line sensors (pyserial): an ASCII line protocol parsed by a regex with named groups.

```toml
[[serial]]
name = "scale"
port = "/dev/ttyUSB0"
baudrate = 9600
regex = '(?P<t>\\S+) W:(?P<weight>[-0-9.]+)kg T:(?P<temp>[-0-9.]+)C'
timestamp_group = "t"          # optional: the line's own time (else: when it arrived)
timestamp_format = "iso8601"   # or "unix_s", "unix_ms", a strptime pattern; timezone = "..."
[[serial.signals]]
name = "weight"
group = "weight"
unit = "kg"
```

pyserial is blocking; reads run in a worker thread with a short timeout, so a stop never
waits on the line. A line that does not match, a group that is not a number, bad UTF-8
and a line longer than ``max_line_bytes`` (read on until the next newline and dropped) are
counted per signal (``<line>`` when the whole line is bad, ``<timestamp>`` when its time
group cannot be read: the line is then dropped) and logged once. A port that
disappears (USB adapter unplugged, socat gone) is reopened with jittered backoff.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import serial

from agent.connectors.base import Emit, Sample
from agent.connectors.common import (
    SCALING,
    LinkConnector,
    MalformedPayload,
    Scaling,
    parse_decimal,
    parse_list_section,
    parse_scaling,
    parse_signals,
    parse_time_format,
    parse_timestamp,
    parse_timezone,
    truncate,
)
from agent.tomlcheck import TableKeys, Where
from agent.tomlcheck import choice as _choice
from agent.tomlcheck import get as _get
from agent.tomlcheck import get_int as _int

__all__ = [
    "TABLES",
    "LineSplitter",
    "SerialConfig",
    "SerialConnector",
    "SerialSignal",
    "decode_line",
]

log = logging.getLogger(__name__)
UNTERMINATED = "<no newline>"  # the error label of a line cut off without its newline
PARITIES = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD}


@dataclass(frozen=True, slots=True)
class SerialSignal:
    name: str
    group: str
    scaling: Scaling


@dataclass(frozen=True, slots=True)
class SerialConfig:
    name: str
    port: str
    baudrate: int
    parity: str
    regex: re.Pattern[str]
    max_line_bytes: int
    signals: tuple[SerialSignal, ...]
    timestamp_group: str | None = None  # None: a line's time is when it arrived
    timestamp_format: str = "iso8601"
    timezone: dt.tzinfo | None = None
    line_timeout_ms: int = 100  # a partial line silent this long lost its newline
    line_start: str = ""  # optional: what every line begins with (e.g. "$" or "W:")


# The keys of a [[serial]] table are the fields of these dataclasses (code review D16).
TABLES: Mapping[str, TableKeys] = {
    "serial[]": TableKeys(SerialConfig),
    "serial[].signals[]": TableKeys(SerialSignal, inline={"scaling": SCALING}),
}


def _signal(t: dict[str, Any], w: Where) -> SerialSignal:
    TABLES["serial[].signals[]"].check(t, w)
    return SerialSignal(_get(t, w, "name", str), _get(t, w, "group", str), parse_scaling(t, w))


def _connector(t: dict[str, Any], w: Where) -> SerialConfig:
    source = _get(t, w, "regex", str)
    try:
        regex = re.compile(source)
    except re.error as err:
        raise w.error("regex", f"not a regular expression: {err}") from err
    signals = parse_signals(t, w, _signal)
    for i, s in enumerate(signals):
        if s.group not in regex.groupindex:
            known = ", ".join(regex.groupindex) or "none"
            raise w.error(f"signals[{i}].group", f"{s.group!r} is not a named group ({known})")
    ts_group = _get(t, w, "timestamp_group", str, None)
    if ts_group is not None and ts_group not in regex.groupindex:
        known = ", ".join(regex.groupindex) or "none"
        raise w.error("timestamp_group", f"{ts_group!r} is not a named group ({known})")
    baudrate = _int(t, w, "baudrate", 50, 4_000_000, 9600)
    return SerialConfig(
        name=_get(t, w, "name", str),
        port=_get(t, w, "port", str),
        baudrate=baudrate,
        parity=_choice(t, w, "parity", tuple(PARITIES), "none"),
        regex=regex,
        max_line_bytes=_int(t, w, "max_line_bytes", 16, 65_536, 512),
        signals=signals,
        timestamp_group=ts_group,
        timestamp_format=parse_time_format(t, w),
        timezone=parse_timezone(t, w),
        line_timeout_ms=_int(t, w, "line_timeout_ms", 10, 60_000, _line_timeout_ms(baudrate)),
        line_start=_get(t, w, "line_start", str, ""),
    )


def _line_timeout_ms(baudrate: int) -> int:
    """The default: 20 character times (10 bits each) at the line's speed, at least 100 ms."""
    return max(100, -(-20 * 10 * 1000 // baudrate))


def parse_serial_section(raw: Any, w: Where) -> tuple[SerialConfig, ...]:
    return parse_list_section(raw, w, _connector, TABLES["serial[]"])


def decode_line(
    cfg: SerialConfig, line: bytes, now_ns: int, on_error: Callable[[str, MalformedPayload], None]
) -> list[Sample]:
    try:
        text = line.decode("utf-8").strip("\r\n")
    except UnicodeDecodeError:
        on_error("<line>", MalformedPayload("line", f"not UTF-8: {truncate(repr(line))}"))
        return []
    m = cfg.regex.search(text)
    if m is None:
        on_error("<line>", MalformedPayload("line", f"does not match the regex: {truncate(text)}"))
        return []
    if cfg.timestamp_group is not None:
        try:
            raw_ts = m.group(cfg.timestamp_group)
            if raw_ts is None:
                raise MalformedPayload(cfg.timestamp_group, "group did not take part in the match")
            now_ns = parse_timestamp(
                raw_ts, cfg.timestamp_format, cfg.timestamp_group, cfg.timezone
            )
        except MalformedPayload as err:
            on_error("<timestamp>", err)
            return []
    out = []
    for s in cfg.signals:
        raw = m.group(s.group)
        try:
            if raw is None:
                raise MalformedPayload(s.group, "group did not take part in the match")
            value = s.scaling.apply(parse_decimal(raw, s.group), s.group)
        except MalformedPayload as err:
            on_error(s.name, err)
            continue
        out.append(Sample(s.name, value, s.scaling.unit, now_ns))
    return out


@dataclass
class LineSplitter:
    """Bytes in, complete lines out; an over-long line is dropped up to its newline.

    A line whose newline never came is cut off, counted in ``unterminated`` and never joined
    to the next line: when the line is silent for ``timeout_ns`` (``feed`` with the arrival
    time, or ``idle``), and, with ``line_start`` set, at the start of the next line.
    """

    max_bytes: int
    timeout_ns: int | None = None
    line_start: bytes = b""
    unterminated: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _skipping: bool = False
    _last_ns: int = 0

    def idle(self, now_ns: int) -> None:
        """Nothing arrived: a partial line silent past the timeout is cut off."""
        if self._buf and self.timeout_ns is not None and now_ns - self._last_ns > self.timeout_ns:
            self._buf.clear()
            self.unterminated += 1

    def feed(self, data: bytes, now_ns: int | None = None) -> tuple[list[bytes], int]:
        """(complete lines, how many over-long lines were dropped)."""
        if now_ns is not None:
            self.idle(now_ns)  # what waited too long ended before these bytes
            if data:
                self._last_ns = now_ns
        lines, dropped = [], 0
        for chunk in data.splitlines(keepends=True):
            if self._skipping:
                if chunk.endswith(b"\n"):
                    self._skipping = False
                continue
            self._buf += chunk
            complete = chunk.endswith(b"\n")
            if len(self._buf) > self.max_bytes:
                self._buf.clear()
                self._skipping, dropped = not complete, dropped + 1
            elif complete:
                lines.append(self._started(bytes(self._buf)))
                self._buf.clear()
        return lines, dropped

    def _started(self, line: bytes) -> bytes:
        """The line from its last ``line_start``; what came before it had lost its newline."""
        at = line.rfind(self.line_start) if self.line_start else 0
        if at > 0:
            self.unterminated += 1
            return line[at:]
        return line


@dataclass
class SerialConnector(LinkConnector[SerialConfig]):
    KIND = "serial"
    lines: int = 0

    async def run(self, emit: Emit) -> None:
        await self.reconnector.run(self._session, (serial.SerialException, OSError), emit)

    async def _session(self, connected: Callable[[], None], emit: Emit) -> None:
        cfg = self.config
        port = await asyncio.to_thread(
            serial.Serial,
            cfg.port,
            cfg.baudrate,
            parity=PARITIES[cfg.parity],
            timeout=0.2,  # each read returns within 0.2 s: a stop is never held up
        )
        try:
            connected()
            log.info("serial %s: opened %s at %d baud", self.name, cfg.port, cfg.baudrate)
            splitter = LineSplitter(
                cfg.max_line_bytes, cfg.line_timeout_ms * 1_000_000, cfg.line_start.encode()
            )
            while True:
                data = await asyncio.to_thread(_read_some, port)
                now = time.time_ns()
                cut = splitter.unterminated
                lines, dropped = splitter.feed(data, now)
                for _ in range(dropped):
                    self.bad("<line>", MalformedPayload("line", "longer than max_line_bytes"))
                for _ in range(splitter.unterminated - cut):
                    self.bad(UNTERMINATED, MalformedPayload("line", "ended without its newline"))
                samples = []
                for line in lines:
                    self.lines += 1
                    samples += decode_line(cfg, line, now, self.bad)
                if samples:
                    await emit(samples)
        finally:
            await asyncio.to_thread(port.close)


def _read_some(port: serial.Serial) -> bytes:
    """What has arrived (at least one byte, or nothing after the port's timeout)."""
    first = port.read(1)
    if not first:
        return b""
    waiting = port.in_waiting
    return first + (port.read(waiting) if waiting else b"")
