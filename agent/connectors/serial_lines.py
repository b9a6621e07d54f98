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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import serial

from agent.config import CONNECTOR_PARSERS, Where, _choice, _get, _int, _no_unknown
from agent.connectors.base import Emit, Sample
from agent.connectors.common import (
    SCALING_KEYS,
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

__all__ = ["LineSplitter", "SerialConfig", "SerialConnector", "SerialSignal", "decode_line"]

log = logging.getLogger(__name__)
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


def _signal(t: dict[str, Any], w: Where) -> SerialSignal:
    _no_unknown(t, w, {"name", "group", *SCALING_KEYS})
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
    return SerialConfig(
        name=_get(t, w, "name", str),
        port=_get(t, w, "port", str),
        baudrate=_int(t, w, "baudrate", 50, 4_000_000, 9600),
        parity=_choice(t, w, "parity", tuple(PARITIES), "none"),
        regex=regex,
        max_line_bytes=_int(t, w, "max_line_bytes", 16, 65_536, 512),
        signals=signals,
        timestamp_group=ts_group,
        timestamp_format=parse_time_format(t, w),
        timezone=parse_timezone(t, w),
    )


def parse_serial_section(raw: Any, w: Where) -> tuple[SerialConfig, ...]:
    known = {"name", "port", "baudrate", "parity", "regex", "max_line_bytes", "signals"}
    known |= {"timestamp_group", "timestamp_format", "timezone"}
    return parse_list_section(raw, w, _connector, known)


CONNECTOR_PARSERS["serial"] = parse_serial_section


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
    """Bytes in, complete lines out; an over-long line is dropped up to its newline."""

    max_bytes: int
    _buf: bytearray = field(default_factory=bytearray)
    _skipping: bool = False

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """(complete lines, how many over-long lines were dropped)."""
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
                lines.append(bytes(self._buf))
                self._buf.clear()
        return lines, dropped


@dataclass
class SerialConnector(LinkConnector[SerialConfig]):
    KIND = "serial"
    lines: int = 0

    async def run(self, emit: Emit) -> None:
        await self.reconnector.run(self._session_for(emit), (serial.SerialException, OSError))

    def _session_for(self, emit: Emit) -> Callable[[Callable[[], None]], Any]:
        cfg = self.config

        async def session(connected: Callable[[], None]) -> None:
            port = await asyncio.to_thread(
                serial.Serial,
                cfg.port,
                cfg.baudrate,
                parity=PARITIES[cfg.parity],
                timeout=0.2,  # each read returns within 0.2 s: a stop is never held up
            )
            try:
                connected()
                splitter = LineSplitter(cfg.max_line_bytes)
                while True:
                    data = await asyncio.to_thread(_read_some, port)
                    lines, dropped = splitter.feed(data)
                    for _ in range(dropped):
                        self.bad("<line>", MalformedPayload("line", "longer than max_line_bytes"))
                    now = time.time_ns()
                    samples = []
                    for line in lines:
                        self.lines += 1
                        samples += decode_line(cfg, line, now, self.bad)
                    if samples:
                        await emit(samples)
            finally:
                await asyncio.to_thread(port.close)

        return session


def _read_some(port: serial.Serial) -> bytes:
    """What has arrived (at least one byte, or nothing after the port's timeout)."""
    first = port.read(1)
    if not first:
        return b""
    waiting = port.in_waiting
    return first + (port.read(waiting) if waiting else b"")
