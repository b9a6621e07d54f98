"""Register decoding and span planning for the Modbus connector (pure functions)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ModbusTag
from agent.connectors.modbus import MAX_REGISTERS_PER_READ, decode, plan_spans

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
