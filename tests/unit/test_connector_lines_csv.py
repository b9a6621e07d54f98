"""Serial lines, CSV rows and their timestamps: any input is mapped or counted with the field
named, never raised past the parser; config mistakes name the key and the line.
"""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import parse_config
from agent.connectors.common import MalformedPayload, parse_timestamp
from agent.connectors.csvdrop import CsvConfig, parse_rows
from agent.connectors.serial_lines import SerialConfig, decode_line
from agent.errors import ConfigError

BASE = '[device]\nname = "gw"\n'
SERIAL = """[[serial]]
name = "scale"
port = "/dev/ttyUSB0"
regex = '(?P<t>[^ ]*) W:(?P<w>[^ ]*) T:(?P<temp>[^ ]*)'
timestamp_group = "t"
timestamp_format = "unix_ms"
[[serial.signals]]
name = "weight"
group = "w"
scale = 0.001
[[serial.signals]]
name = "temp"
group = "temp"
"""
CSV = """[[csv]]
name = "erp"
folder = "."
timestamp_column = "when"
timestamp_format = "%d.%m.%Y %H:%M:%S"
timezone = "Europe/Berlin"
delimiter = ";"
[[csv.signals]]
name = "weight"
column = "kg"
"""


def _serial(text: str = SERIAL) -> SerialConfig:
    (cfg,) = parse_config(BASE + text, "/tmp/a.toml").connectors["serial"]
    assert isinstance(cfg, SerialConfig)
    return cfg


def _csv(text: str = CSV) -> CsvConfig:
    (cfg,) = parse_config(BASE + text, "/tmp/a.toml").connectors["csv"]
    assert isinstance(cfg, CsvConfig)
    return cfg


def _decode(cfg: SerialConfig, line: bytes) -> tuple[list[tuple[str, float, int]], list[str]]:
    errors: list[str] = []

    def count(signal: str, err: MalformedPayload) -> None:
        assert err.field and str(err)
        errors.append(signal)

    return [(s.signal, s.value, s.ts_ns) for s in decode_line(cfg, line, 7, count)], errors


def test_a_serial_line_maps_groups_to_scaled_signals_at_its_own_time() -> None:
    got, errors = _decode(_serial(), b"1764057600000.5 W:1500 T:21.5\r\n")
    assert got == [
        ("weight", 1.5, 1_764_057_600_000_500_000),
        ("temp", 21.5, 1_764_057_600_000_500_000),
    ]
    assert errors == []


def test_a_bad_time_drops_the_line_and_a_bad_number_only_its_signal() -> None:
    assert _decode(_serial(), b"later W:1 T:2\n") == ([], ["<timestamp>"])
    assert _decode(_serial(), b"5 W:heavy T:2\n") == ([("temp", 2.0, 5_000_000)], ["weight"])
    assert _decode(_serial(), b"\xc3\x28\n") == ([], ["<line>"])
    assert _decode(_serial(), b"nothing here\n") == ([], ["<line>"])


@given(st.binary(max_size=200))
def test_any_serial_bytes_are_decoded_or_counted_never_raised(line: bytes) -> None:
    got, errors = _decode(_serial(), line)
    assert all(math.isfinite(v) and 0 <= ts < 2**63 for _, v, ts in got)
    assert len(got) + len(errors) >= 1  # every line is accounted for


@given(
    st.text(max_size=80),
    st.sampled_from(["iso8601", "unix_s", "unix_ms", "%d.%m.%Y %H:%M:%S", "%Y-%m-%dT%H:%M%z"]),
    st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-12))]),
)
def test_any_time_text_is_placed_or_refused_by_name(
    text: str, fmt: str, tz: dt.tzinfo | None
) -> None:
    field = "when"
    try:
        ns = parse_timestamp(text, fmt, "when", tz)
    except MalformedPayload as err:
        ns, field = 0, err.field
    assert field == "when" and 0 <= ns < 2**63


def test_times_are_exact_and_naive_ones_need_a_zone() -> None:
    assert parse_timestamp("1764057600.123456789", "unix_s", "t") == 1_764_057_600_123_456_789
    assert parse_timestamp("2026-11-25T08:00:00.000001+01:00", "iso8601", "t") == (
        1_795_590_000_000_001_000
    )
    with pytest.raises(MalformedPayload, match="no UTC offset"):
        parse_timestamp("2026-11-25T08:00:00", "iso8601", "t")
    with pytest.raises(MalformedPayload, match="outside the time range"):
        parse_timestamp("1960-01-01T00:00:00+00:00", "iso8601", "t")


def test_csv_rows_in_local_time_become_utc_and_bad_rows_keep_their_line() -> None:
    text = "when;kg\n25.11.2026 09:00:00;12,5\n25.11.2026 09:00:00;12.5\n01.07.2026 09:00:00;1\n"
    samples, bad = parse_rows(_csv(), text)
    # Europe/Berlin: UTC+1 in November, UTC+2 (summer time) in July
    assert [(s.ts_ns, s.value) for s in samples] == [
        (1_795_593_600_000_000_000, 12.5),
        (1_782_889_200_000_000_000, 1.0),
    ]
    assert [(b.line, b.reason) for b in bad] == [(2, "kg: not a number: 12,5")]


@given(st.text(max_size=400), st.text(max_size=400))
def test_any_csv_header_and_body_give_samples_or_numbered_bad_rows(head: str, body: str) -> None:
    samples, bad = parse_rows(_csv(), head + "\n" + body)
    assert all(b.line >= 1 and b.reason for b in bad)
    assert all(math.isfinite(s.value) and 0 <= s.ts_ns < 2**63 for s in samples)


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("section", "old", "new", "key", "line"),
    [
        (SERIAL, "regex = '(?P<t>", "regex = '(?P<t", "serial[0].regex", 6),
        (SERIAL, 'timestamp_group = "t"', 'timestamp_group = "x"', "serial[0].timestamp_group", 7),
        (SERIAL, 'group = "temp"', 'group = "tmp"', "serial[0].signals[1].group", 15),
        (SERIAL, 'format = "unix_ms"', 'format = "ms"', "serial[0].timestamp_format", 8),
        (SERIAL, 'port = "/dev/ttyUSB0"', "port = 7", "serial[0].port", 5),
        (SERIAL, "scale = 0.001", "scale = 0.001\nbaud = 9600", "serial[0].signals[0].baud", 13),
        (CSV, 'delimiter = ";"', 'delimiter = ";;"', "csv[0].delimiter", 9),
        (CSV, '"Europe/Berlin"', '"Mars/Olympus"', "csv[0].timezone", 8),
        (CSV, 'folder = "."\n', "", "csv[0].folder", 3),
        (CSV, 'column = "kg"', 'column = "kg"\nunit = 3', "csv[0].signals[0].unit", 13),
    ],
)
def test_config_errors_name_the_key_and_line(
    section: str, old: str, new: str, key: str, line: int
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + _edit(section, old, new), "a.toml")
    assert (err.value.key, err.value.line) == (key, line)


def test_a_partial_line_is_cut_off_by_silence_or_the_next_lines_start() -> None:
    from agent.connectors.serial_lines import LineSplitter

    ms = 1_000_000
    s = LineSplitter(max_bytes=64, timeout_ns=100 * ms, line_start=b"$")
    assert s.feed(b"$1.5", 0) == ([], 0)
    assert s.feed(b"$2.", 50 * ms) == ([], 0)  # 50 ms later: still the same line
    s.idle(120 * ms)  # 70 ms of silence: not yet
    assert s.unterminated == 0
    s.idle(151 * ms)  # past 100 ms since the last byte: cut off
    assert s.unterminated == 1
    assert s.feed(b"5\n$3.5\n", 160 * ms) == ([b"5\n", b"$3.5\n"], 0)  # '5' is its own
    assert s.feed(b"$4.$5.5\n", 170 * ms) == ([b"$5.5\n"], 0)
    assert s.unterminated == 2
