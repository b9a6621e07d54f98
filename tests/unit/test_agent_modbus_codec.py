"""Register and bit decoding, span planning, the circuit breaker and the RTU config checks
of the Modbus connector (pure functions)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ModbusTag, parse_config
from agent.connectors.modbus import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    Breaker,
    decode,
    plan_spans,
)
from agent.errors import ConfigError

_FMT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "float64": ">d",
}


@given(
    st.sampled_from(sorted(_FMT)),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
    st.data(),
)
def test_decode_undoes_every_word_and_byte_order(
    kind: str, words: str, bytes_: str, data: st.DataObject
) -> None:
    fmt = _FMT[kind]
    if kind.startswith("float"):
        value = data.draw(
            st.floats(allow_nan=False, allow_infinity=False, width=32 if kind == "float32" else 64)
        )
    else:
        bits = struct.calcsize(fmt) * 8
        lo, hi = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            if kind.startswith("int")
            else (0, 2**bits - 1)
        )
        value = data.draw(st.integers(lo, hi))
    raw = struct.pack(fmt, value)
    if bytes_ == "little":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    regs = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if words == "little":
        regs.reverse()
    tag = ModbusTag("t", 0, type=kind, word_order=words, byte_order=bytes_)
    assert decode(regs, tag) == float(value)


def test_scale_and_offset_apply_after_decoding() -> None:
    tag = ModbusTag("t", 0, type="int16", scale=0.1, offset=-40.0)
    assert decode([(-123) & 0xFFFF], tag) == pytest.approx(-52.3)


def test_adjacent_tags_share_a_read_and_far_ones_do_not() -> None:
    tags = [
        ModbusTag("a", 0),
        ModbusTag("b", 2),
        ModbusTag("c", 6),
        ModbusTag("d", 40),
        ModbusTag("e", 0, table="input", type="int16"),
    ]
    spans = plan_spans(tags, max_gap=2)
    assert [(s.table, s.start, s.count, [t.name for t in s.tags]) for s in spans] == [
        ("holding", 0, 8, ["a", "b", "c"]),
        ("holding", 40, 2, ["d"]),
        ("input", 0, 1, ["e"]),
    ]


@given(
    st.lists(
        st.tuples(st.integers(0, 2000), st.sampled_from(["int16", "float32", "float64"])),
        min_size=1,
        max_size=80,
        unique_by=lambda t: t[0],
    ),
    st.integers(0, 20),
)
def test_spans_cover_every_tag_within_the_protocol_limit(
    specs: list[tuple[int, str]], gap: int
) -> None:
    tags = [ModbusTag(f"t{a}", a, type=k) for a, k in specs]
    spans = plan_spans(tags, max_gap=gap)
    assert sorted(t.name for s in spans for t in s.tags) == sorted(t.name for t in tags)
    for s in spans:
        assert 0 < s.count <= MAX_REGISTERS_PER_READ
        for t in s.tags:
            assert s.start <= t.address and t.address + t.count <= s.start + s.count


@given(
    st.lists(st.integers(0, 65535), min_size=1, max_size=300, unique=True),
    st.sampled_from(["coil", "discrete"]),
    st.integers(0, 20),
)
def test_bit_spans_cover_every_tag_within_2000_bits(
    addresses: list[int], table: str, gap: int
) -> None:
    tags = [ModbusTag(f"b{a}", a, table=table, type="bool") for a in addresses]
    spans = plan_spans(tags, max_gap=gap)
    assert sorted(t.name for s in spans for t in s.tags) == sorted(t.name for t in tags)
    assert all(s.table == table and 0 < s.count <= MAX_BITS_PER_READ for s in spans)
    for s in spans:
        assert all(s.start <= t.address < s.start + s.count for t in s.tags)


def test_bits_decode_to_zero_or_one() -> None:
    coil = ModbusTag("pump", 3, table="coil", type="bool")
    assert (decode([1], coil), decode([0], coil)) == (1.0, 0.0)


def test_a_dead_device_trips_the_breaker_and_one_silent_retry_reopens_it() -> None:
    b = Breaker(failures_to_open=3, open_s=10.0)
    for now in (0.0, 1.0):
        b.record(ok=False, now=now)
    assert b.allows(2.0) and b.trips == 0
    b.record(ok=False, now=2.0)
    assert b.trips == 1 and not b.allows(11.9) and b.allows(12.0)
    b.record(ok=False, now=12.0)  # half-open: one silent poll is enough
    assert b.trips == 2 and not b.allows(21.9)
    b.record(ok=True, now=22.0)  # an answer closes it
    b.record(ok=False, now=23.0)
    assert b.allows(24.0) and b.trips == 2


RTU = """[device]
name = "gw"
[[modbus]]
name = "a"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
baudrate = 9600
[[modbus.tags]]
name = "x"
address = 0
[[modbus]]
name = "b"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
baudrate = 9600
device_id = 2
[[modbus.tags]]
name = "y"
address = 0
"""


def _edit(text: str, old: str, new: str, nth: int) -> str:
    """Replace the ``nth`` (0-based) occurrence of ``old``."""
    parts = text.split(old)
    return old.join(parts[: nth + 1]) + new + old.join(parts[nth + 1 :])


@pytest.mark.parametrize(
    ("old", "new", "nth", "key", "line"),
    [
        ('serial_port = "/dev/ttyUSB0"\n', "", 0, "modbus[0].serial_port", 3),
        ("baudrate = 9600", "baudrate = 19200", 1, "modbus[1].baudrate", 15),
        ("device_id = 2", "device_id = 2\nbytesize = 6", 0, "modbus[1].bytesize", 17),
        ("device_id = 2", 'device_id = 2\nparity = "X"', 0, "modbus[1].parity", 17),
        ('transport = "rtu"', 'transport = "ascii"', 1, "modbus[1].transport", 13),
        (
            'name = "y"',
            'name = "y"\ntable = "coil"\ntype = "int16"',
            0,
            "modbus[1].tags[0].type",
            20,
        ),
    ],
)
def test_rtu_config_errors_name_the_key_and_line(
    old: str, new: str, nth: int, key: str, line: int
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_edit(RTU, old, new, nth), "a.toml")
    assert (err.value.key, err.value.line) == (key, line)


def test_rtu_devices_on_one_port_share_its_settings() -> None:
    cfg = parse_config(
        RTU.replace("baudrate = 9600\n", "bytesize = 7\nbaudrate = 9600\n"), "a.toml"
    )
    assert [(d.transport, d.serial_port, d.bytesize, d.device_id) for d in cfg.modbus] == [
        ("rtu", "/dev/ttyUSB0", 7, 1),
        ("rtu", "/dev/ttyUSB0", 7, 2),
    ]
