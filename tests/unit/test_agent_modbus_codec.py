"""Register and bit decoding, span planning, the circuit breaker and the RTU config checks
of the Modbus connector (pure functions)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from agent.config import ModbusDeviceConfig, ModbusTag, parse_config
from agent.connectors.base import QUALITY_GOOD, Sample
from agent.connectors.modbus import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    Breaker,
    _new_client,
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


_SCALES = st.sampled_from([1.0, -1.0, 0.1, 1e300, 0.0]) | st.floats()
_TAG = st.tuples(
    st.integers(0, 300),  # address: tags may overlap (two names for one register)
    st.sampled_from(sorted(_FMT)),
    st.sampled_from(["big", "little"]),  # word order
    st.sampled_from(["big", "little"]),  # byte order
    st.sampled_from([(1.0, 0.0), (0.1, -40.0)]) | st.tuples(_SCALES, _SCALES),
)


def _bits(values: list[float]) -> list[bytes]:
    """Values by their bits: NaN payloads and the sign of zero count."""
    return [struct.pack(">d", v) for v in values]


@settings(max_examples=300)
@given(
    st.lists(_TAG, min_size=1, max_size=60),
    st.integers(0, 8),
    st.data(),
)
def test_a_span_decodes_to_the_bits_decode_gives_each_tag(
    specs: list[tuple[int, str, str, str, tuple[float, float]]], gap: int, data: st.DataObject
) -> None:
    """The span decoder (one struct call for a gateway's usual map) against ``decode``, the
    reference, tag by tag: every type, order, scale, offset, gap and overlap."""
    tags = [
        ModbusTag(f"t{i}", a, type=k, word_order=w, byte_order=b, scale=sc, offset=off)
        for i, (a, k, w, b, (sc, off)) in enumerate(specs)
    ]
    for span in plan_spans(tags, max_gap=gap):
        regs = data.draw(st.lists(st.integers(0, 65535), min_size=span.count, max_size=span.count))
        want = [decode(regs[t.address - span.start :][: t.count], t) for t in span.tags]
        assert _bits(span.values(regs)) == _bits(want)
        assert _bits(span.values([*regs, 0x4142])) == _bits(want)  # a device that says more
        # the samples built in C (``Span.samples``): the tuples the list comprehension made
        got = span.samples(regs, 7)
        assert all(type(s) is Sample for s in got)
        assert [(s.signal, s.unit, s.ts_ns, s.quality) for s in got] == [
            (t.name, t.unit, 7, QUALITY_GOOD) for t in span.tags
        ]
        assert _bits([float(s.value) for s in got]) == _bits(want)


def test_a_gateway_map_decodes_in_one_struct_call() -> None:
    """Float32 tags back to back, big-endian (the benchmark's and most gateways' map): the
    fast path is the one taken; a word-swapped tag in the span sends it tag by tag."""
    tags = [ModbusTag(f"t{i}", 2 * i) for i in range(50)]
    (span,) = plan_spans(tags, max_gap=8)
    assert span.decoder.fmt is not None
    regs = [w for i in range(50) for w in struct.unpack(">HH", struct.pack(">f", i / 3))]
    assert span.values(regs) == [decode(regs[2 * i : 2 * i + 2], t) for i, t in enumerate(tags)]
    swapped = [*tags[:-1], ModbusTag("t49", 98, word_order="little")]
    assert plan_spans(swapped, max_gap=8)[0].decoder.fmt is None


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


async def test_a_client_decodes_reads_as_before_and_names_only_their_size() -> None:
    """The read responses the connector registers with each client decode every register
    and bit as pymodbus's own do; their text (built for every response, logged or not)
    names the counts instead of the values."""
    client = _new_client(ModbusDeviceConfig(name="plc", host="127.0.0.1"))
    decoder = client.ctx.framer.decoder
    regs = decoder.decode(bytes([3, 6, 0, 1, 0xFF, 0xFE, 0x12, 0x34]))
    assert regs is not None
    assert type(regs).__mro__[2] is ReadHoldingRegistersResponse
    assert regs.registers == [1, 0xFFFE, 0x1234]
    assert str(regs) == "_HoldingRegisters(dev_id=0, transaction_id=0, 3 registers, 0 bits)"
    inputs = decoder.decode(bytes([4, 2, 0, 9]))
    assert isinstance(inputs, ReadInputRegistersResponse) and inputs.registers == [9]
    coils = decoder.decode(bytes([1, 1, 0b101]))
    assert isinstance(coils, ReadCoilsResponse) and coils.bits[:3] == [True, False, True]
    assert "8 bits" in str(coils)
    client.close()
