"""The serial line connector over a real pty pair (socat): lines parsed by the configured
regex; bad and over-long lines counted while good ones flow; a line's own time group gives
the readings' time; an unplugged line reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from agent.config import parse_config
from agent.connectors.serial_lines import SerialConfig, SerialConnector
from tests.conftest import missing
from tests.connectorkit import running
from tests.ptys import PtyPair, socat_available
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    if not socat_available():
        missing("socat is not installed (apt install socat)")
    pair = PtyPair(tmp_path / "pty").start()
    yield pair
    pair.stop()


def _connected(cfg: SerialConfig) -> Any:
    return running(SerialConnector(cfg), lambda c: c.reconnector.sessions >= 1)


REGEX = "W:(?P<weight>[^ ]+)kg T:(?P<temp>[^ ]+)C"


def _config(port: Path, regex: str = REGEX, extra: str = "") -> SerialConfig:
    text = f"""
[device]
name = "gw"
[[serial]]
name = "scale"
port = "{port}"
baudrate = 19200
regex = '{regex}'
max_line_bytes = 64
{extra}
[[serial.signals]]
name = "weight"
group = "weight"
unit = "kg"
[[serial.signals]]
name = "temp"
group = "temp"
unit = "C"
"""
    (cfg,) = parse_config(text, "a.toml").connectors["serial"]
    assert isinstance(cfg, SerialConfig)
    return cfg


def _write(port: Path, data: bytes) -> None:
    with serial.Serial(str(port), 19200, timeout=1) as s:
        s.write(data)
        s.flush()


async def test_lines_become_samples_and_bad_lines_are_counted(line: PtyPair) -> None:
    async with _connected(_config(line.a)) as (conn, got):
        stream = b"W:12.5kg T:21.0C\r\n" + b"garbage\n" + b"W:x1kg T:22.0C\n"
        stream += b"W:" + b"9" * 200 + b"kg T:1C\n" + b"\xff\xfe\n" + b"W:13.0kg T:21.5C\n"
        await asyncio.to_thread(_write, line.b, stream)
        await until(lambda: len(got) >= 4 and sum(conn.errors.values()) >= 4)
    assert [(s.signal, s.value, s.unit) for s in got] == [
        ("weight", 12.5, "kg"), ("temp", 21.0, "C"),
        ("temp", 22.0, "C"),
        ("weight", 13.0, "kg"), ("temp", 21.5, "C"),
    ]  # fmt: skip
    assert conn.errors == {"<line>": 3, "weight": 1}  # no match, too long, bad UTF-8; 'x1'


async def test_an_unplugged_line_is_reopened(line: PtyPair) -> None:
    async with _connected(_config(line.a)) as (conn, got):
        await asyncio.to_thread(_write, line.b, b"W:1kg T:1C\n")
        await until(lambda: len(got) == 2)
        line.stop()  # the adapter is pulled
        await until(lambda: conn.reconnector.drops >= 1)
        line.start()  # and plugged back in
        await until(lambda: conn.reconnector.sessions >= 2)
        await asyncio.to_thread(_write, line.b, b"W:2kg T:2C\n")
        await until(lambda: [s.value for s in got if s.signal == "weight"] == [1.0, 2.0])


async def test_a_line_carries_its_own_time(line: PtyPair) -> None:
    cfg = _config(
        line.a, "(?P<t>[^ ]+) " + REGEX, 'timestamp_group = "t"\ntimestamp_format = "unix_ms"'
    )
    async with _connected(cfg) as (conn, got):
        stream = b"1764057600000 W:1kg T:2C\n" + b"soon W:5kg T:6C\n"
        stream += b"1764057600250 W:3kg T:4C\n"
        await asyncio.to_thread(_write, line.b, stream)
        await until(lambda: len(got) >= 4)
    assert [(s.signal, s.value, s.ts_ns) for s in got] == [
        ("weight", 1.0, 1_764_057_600_000_000_000), ("temp", 2.0, 1_764_057_600_000_000_000),
        ("weight", 3.0, 1_764_057_600_250_000_000), ("temp", 4.0, 1_764_057_600_250_000_000),
    ]  # fmt: skip
    assert conn.errors == {"<timestamp>": 1}  # "soon": the whole line is dropped, not guessed


async def test_a_line_without_its_newline_is_an_error_never_merged(
    line: PtyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent.connectors.serial_lines")
    async with _connected(_config(line.a, extra='line_timeout_ms = 50\nline_start = "W:"')) as (
        conn,
        got,
    ):
        # the newline is lost, then the line falls silent: the timeout cuts it off
        await asyncio.to_thread(_write, line.b, b"W:12.5kg T:2")
        await until(lambda: conn.errors.get("<no newline>") == 1, what="the timeout cut")
        await asyncio.to_thread(_write, line.b, b"1.0C\nW:13.0kg T:21.5C\n")
        # the newline is lost and the next line follows at once: its start cuts it off
        await asyncio.to_thread(_write, line.b, b"W:14.0kg T:2W:15.0kg T:23.0C\n")
        await until(lambda: len(got) >= 4 and conn.errors.get("<no newline>") == 2)
    assert [(s.signal, s.value) for s in got] == [
        ("weight", 13.0), ("temp", 21.5), ("weight", 15.0), ("temp", 23.0),
    ]  # fmt: skip
    assert conn.errors == {"<no newline>": 2, "<line>": 1}  # and the orphan tail '1.0C'
    assert f"serial scale: opened {line.a}" in caplog.text
