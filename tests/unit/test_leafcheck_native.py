"""The native window check accepts exactly what the Python leaf decoder accepts.

``attestation/_native/leafcheck.c`` re-implements, for speed, the rules ``decode_leaf``
enforces: deterministic CBOR, the leaf schema, the limits and the expected seq. These
properties compare the two on honest leaves, on every float edge case, and on arbitrary
corruptions, for a list of leaves and for the leaves back to back in one byte string (a CBOR
sequence, ADR 0008); fuzz/targets.py ``leafcheck`` and ``leafseq`` do the same with coverage
guidance.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import merkle
from attestation.errors import MalformedInput
from attestation.leafbatch import (
    NATIVE,
    native_sequence_verdict,
    native_verdict,
    sequence_root,
    split_leaves,
    window_root,
)
from attestation.reading import LeafLimits, Reading, encode_leaf, leaf_hash
from tests.conftest import missing
from tests.strategies import readings, windows


@pytest.fixture(autouse=True)
def _native_built() -> None:
    if not NATIVE:
        missing("the native window check was not built (no C compiler or OpenSSL headers)")


def _native(leaves: list[bytes], first_seq: int, limits: LeafLimits) -> object:
    """The C answer alone (no Python fallback): the root, or ``leaves[i]`` it refused."""
    got = native_verdict(leaves, first_seq, limits)
    assert got is not None
    return got if isinstance(got, bytes) else f"leaves[{got}]"


_LIMITS = LeafLimits()


def _same(leaves: list[bytes], first_seq: int, limits: LeafLimits = _LIMITS) -> object:
    try:
        reference: object = window_root(leaves, first_seq, limits, native=False)
    except MalformedInput as err:
        reference = err.field  # which leaf was refused
    assert _native(leaves, first_seq, limits) == reference
    return reference


@given(windows())
def test_an_honest_window_has_the_reference_root(window: list[Reading]) -> None:
    leaves = [encode_leaf(r) for r in window]
    assert _same(leaves, window[0].seq) == merkle.root([leaf_hash(x) for x in leaves])


@given(readings())
def test_any_reading_encoded_canonically_is_accepted(r: Reading) -> None:
    assert isinstance(_same([encode_leaf(r)], r.seq), bytes)


_FLOAT_EDGES = [0.0, -0.0, math.inf, -math.inf, math.nan, 65504.0, 65505.0, 65520.0, 2**-14]
_FLOAT_EDGES += [2**-24, 2**-25, 3 * 2**-25, 2**-149, 2**-150, 1.0000001, 0.1, 1e39, -1e-310]
_FLOAT_EDGES += [struct.unpack(">f", b"\x7f\x7f\xff\xff")[0], 3.4028235677973366e38, 1 / 3]


@pytest.mark.parametrize("value", _FLOAT_EDGES)
def test_float_edges_agree(value: float) -> None:
    leaf = encode_leaf(Reading(5, 0, "s", value, "u"))
    assert isinstance(_same([leaf], 5), bytes)
    for width, fmt in ((b"\xf9", ">e"), (b"\xfa", ">f"), (b"\xfb", ">d")):  # every other width
        try:
            other = width + struct.pack(fmt, value)
        except OverflowError:
            continue
        head, _, tail = leaf.partition(b"\x04")
        body = tail[{0xF9: 3, 0xFA: 5, 0xFB: 9}[tail[0]] :]
        _same([head + b"\x04" + other + body], 5)


@pytest.mark.parametrize(
    "nan", [b"\xf9\x7e\x00", b"\xf9\x7e\x01", b"\xf9\xfe\x00", b"\xfa\x7f\xc0\x00\x00"]
)
def test_only_the_canonical_nan_is_accepted(nan: bytes) -> None:
    leaf = b"\xa6\x01\x05\x02\x00\x03\x61s\x04" + nan + b"\x05\x60\x06\x00"
    assert isinstance(_same([leaf], 5), bytes) == (nan == b"\xf9\x7e\x00")


@pytest.mark.parametrize(
    "text",
    [b"\xc3\xa9", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff"],
)
def test_utf8_rules_agree(text: bytes) -> None:
    leaf = b"\xa6\x01\x05\x02\x00\x03" + bytes([0x60 + len(text)]) + text
    _same([leaf + b"\x04\xf9\x00\x00\x05\x60\x06\x00"], 5)


@settings(max_examples=400)
@given(
    st.lists(readings(seq=7), min_size=1, max_size=3),
    st.data(),
    st.integers(1, 160),
    st.integers(0, 40),
)
def test_corrupted_leaves_are_judged_alike(
    rs: list[Reading], data: st.DataObject, max_signal: int, max_unit: int
) -> None:
    leaf = _corrupt(encode_leaf(rs[0]), data, ["flip", "cut", "insert", "replace", "none"])
    limits = LeafLimits(max_signal_chars=max_signal, max_unit_chars=max_unit)
    _same([leaf], 7, limits)


def _corrupt(good: bytes, data: st.DataObject, edits: list[str]) -> bytes:
    """``good`` with one edit drawn from ``edits`` at a drawn place."""
    out = bytearray(good)
    edit = data.draw(st.sampled_from(edits))
    at = data.draw(st.integers(0, len(out) - 1))
    if edit == "flip":
        out[at] ^= 1 << data.draw(st.integers(0, 7))
    elif edit == "cut":
        del out[at:]
    elif edit == "insert":
        out[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    elif edit == "replace":
        out[at] = data.draw(st.integers(0, 255))
    elif edit == "append":
        out += data.draw(st.binary(min_size=1, max_size=30))
    return bytes(out)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_judged_alike(blob: bytes) -> None:
    _same([blob], 0)


def test_the_first_bad_leaf_is_named() -> None:
    leaves = [encode_leaf(Reading(10 + i, 0, "s", 1.5, "u")) for i in range(5)]
    leaves[3] = leaves[3][:-1]
    with pytest.raises(MalformedInput, match=r"leaves\[3\]"):
        window_root(leaves, 10)
    with pytest.raises(MalformedInput, match=r"leaves\[0\]: seq 10, expected 11"):
        window_root(leaves, 11)


def _same_sequence(blob: bytes, count: int, first_seq: int) -> object:
    """C and Python agree on ``count`` leaves back to back: the root, or which leaf (a count
    mismatch the Python side calls ``leaves``: C names the leaf where it showed)."""
    got = native_sequence_verdict(blob, count, first_seq)
    assert got is not None
    try:
        reference = sequence_root(blob, count, first_seq, native=False)
    except MalformedInput as err:
        field = err.field
    else:
        assert got == reference
        return reference
    assert isinstance(got, int)
    assert got <= count if field == "leaves" else field == f"leaves[{got}]"
    return field


@given(windows())
def test_an_honest_sequence_has_the_list_root(window: list[Reading]) -> None:
    leaves = [encode_leaf(r) for r in window]
    blob = b"".join(leaves)
    assert _same_sequence(blob, len(leaves), window[0].seq) == window_root(leaves, window[0].seq)
    assert split_leaves(blob) == leaves


@settings(max_examples=400)
@given(windows(), st.data())
def test_corrupted_sequences_are_judged_alike(window: list[Reading], data: st.DataObject) -> None:
    good = b"".join(encode_leaf(r) for r in window)
    blob = _corrupt(good, data, ["flip", "cut", "insert", "append"])
    count = len(window) + data.draw(st.integers(-1, 1))
    if count >= 1:
        _same_sequence(blob, count, window[0].seq)


@given(st.binary(max_size=200), st.integers(1, 6))
def test_arbitrary_sequences_are_judged_alike(blob: bytes, count: int) -> None:
    _same_sequence(blob, count, 0)


def test_a_count_the_bytes_cannot_hold_is_refused_without_allocating_for_it() -> None:
    leaf = encode_leaf(Reading(0, 0, "s", 1.5, "u"))
    assert native_sequence_verdict(leaf, 2**40, 0) == 1  # leaf 1 is missing; no 48 TB scratch
    with pytest.raises(MalformedInput, match="1 leaves sent, the proof signs 1099511627776"):
        sequence_root(leaf, 2**40, 0)


def test_a_sequence_names_its_first_bad_leaf_and_count_mismatches() -> None:
    leaves = [encode_leaf(Reading(10 + i, 0, "s", 1.5, "u")) for i in range(5)]
    blob = b"".join(leaves)
    with pytest.raises(MalformedInput, match=r"leaves\[0\]: seq 10, expected 11"):
        sequence_root(blob, 5, 11)
    with pytest.raises(MalformedInput, match=r"^leaves: 5 leaves sent, the proof signs 6"):
        sequence_root(blob, 6, 10)
    with pytest.raises(MalformedInput, match=r"^leaves: \d+ bytes follow the last of the 4"):
        sequence_root(blob, 4, 10)
    with pytest.raises(MalformedInput, match=r"leaves\[2\]"):
        sequence_root(leaves[0] + leaves[1] + b"\xa6\x01" + blob[-8:], 5, 10)
