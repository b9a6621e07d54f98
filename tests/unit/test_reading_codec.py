"""The hand-written leaf encoder gives deterministic CBOR (as cbor2's pure-Python encoder)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import cbor2
import pytest
from cbor2._encoder import dumps as reference_dumps  # pure Python, see _reference
from hypothesis import given
from hypothesis import strategies as st

from attestation import MalformedInput, Reading, decode_leaf, encode_leaf
from attestation.native import EXTENSION
from attestation.reading import encode_leaves, new_reading
from tests.conftest import missing
from tests.strategies import readings


def _reference(r: Reading) -> bytes:
    """cbor2's pure-Python encoder: its C encoder (cbor2.dumps) writes floats of binary
    exponent 15 that a half holds exactly (32768.0 .. 65504.0, such as 60000.0) as singles,
    which is not RFC 8949's shortest form (s.4.2.2); Hypothesis found 60000.0 on 2026-12-03."""
    return reference_dumps(
        {
            1: r.seq,
            2: r.ts_ns,
            3: r.signal,
            4: r.value if isinstance(r.value, str) else float(r.value),
            5: r.unit,
            6: r.quality,
        },
        canonical=True,
    )


@given(readings())
def test_hand_encoder_matches_cbor2_canonical(r: Reading) -> None:
    assert encode_leaf(r) == _reference(r)


@given(readings())
def test_decode_leaf_round_trips(r: Reading) -> None:
    back = decode_leaf(encode_leaf(r))
    assert back.seq == r.seq and back.signal == r.signal
    both = (back.value, r.value)
    assert back.value == r.value or all(type(v) is float and math.isnan(v) for v in both)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (20.5, "f94d20"),
        (20.0, "f94d00"),
        (float("nan"), "f97e00"),
        (0.1, "fb3fb999999999999a"),
        (60000.0, "f97b53"),  # half, though cbor2's C encoder writes fa476a6000
        (65504.0, "f97bff"),  # the largest half
        (65505.0, "fa477fe100"),
    ],
)
def test_values_take_the_shortest_exact_float_form(value: float, encoded: str) -> None:
    leaf = encode_leaf(Reading(1, 2, "s", value, "u", 0))
    assert bytes.fromhex(encoded) in leaf


def test_integral_values_are_still_cbor_floats() -> None:
    leaf = encode_leaf(Reading(1, 2, "s", 20, "u", 0))
    assert cbor2.loads(leaf)[4] == 20.0
    assert isinstance(cbor2.loads(leaf)[4], float)


def test_decode_refuses_a_non_deterministic_encoding() -> None:
    r = Reading(1, 2, "s", 20.5, "u", 0)
    loose = cbor2.dumps({1: 1, 2: 2, 3: "s", 4: 20.5, 5: "u", 6: 0})  # f64, not shortest
    assert loose != encode_leaf(r)
    with pytest.raises(MalformedInput, match="deterministic"):
        decode_leaf(loose)


@given(st.binary(max_size=200))
def test_decode_leaf_never_crashes_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(MalformedInput):
        decode_leaf(data)


def test_decode_names_the_bad_field() -> None:
    bad = cbor2.dumps({1: -1, 2: 2, 3: "s", 4: 1.0, 5: "u", 6: 0}, canonical=True)
    with pytest.raises(MalformedInput, match=r"leaf\.seq"):
        decode_leaf(bad)
    long_signal = cbor2.dumps({1: 1, 2: 2, 3: "x" * 500, 4: 1.0, 5: "u", 6: 0}, canonical=True)
    with pytest.raises(MalformedInput, match=r"leaf\.signal"):
        decode_leaf(long_signal)


@pytest.mark.parametrize("seq", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
@pytest.mark.parametrize("ts_ns", [-(2**63), -1, 0, 2**32 - 1, 2**32, 1_760_000_000 * 10**9])
def test_every_integer_width_of_seq_and_timestamp_matches_cbor2(seq: int, ts_ns: int) -> None:
    for value in (0.5, 0.1, 1e300, float("inf"), -0.0):
        r = Reading(seq, ts_ns, "Pressure", value, "bar", 0)
        assert encode_leaf(r) == _reference(r)


_ANY = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=140),
    st.none(),
    st.binary(max_size=4),
)


@given(st.fixed_dictionaries(dict.fromkeys(range(1, 7), _ANY)))
def test_the_fast_field_check_accepts_only_what_the_strict_one_accepts(obj: dict[int, Any]) -> None:
    from attestation.reading import LEAF_LIMITS, _fast_fields, reading_from_fields

    fast = _fast_fields(obj, LEAF_LIMITS)
    names = ("seq", "ts_ns", "signal", "value", "unit", "quality")
    fields = dict(zip(names, (obj[k] for k in range(1, 7)), strict=True))
    try:
        strict = reading_from_fields(fields, where="leaf")
    except MalformedInput:
        assert fast is None
        return
    if fast is not None:
        assert fast == strict or (fast.value != fast.value and strict.value != strict.value)


def test_a_text_value_is_a_cbor_text_string_never_nan() -> None:
    leaf = encode_leaf(Reading(1, 2, "recipe", "PVC-200", "", 0))
    assert bytes.fromhex("04" + "67") + b"PVC-200" in leaf
    assert decode_leaf(leaf).value == "PVC-200"


def test_an_integral_text_is_not_confused_with_a_number() -> None:
    as_text = encode_leaf(Reading(1, 2, "s", "20", "", 0))
    as_number = encode_leaf(Reading(1, 2, "s", 20.0, "", 0))
    assert as_text != as_number
    assert decode_leaf(as_text).value == "20" and decode_leaf(as_number).value == 20.0


@given(readings())
def test_new_reading_is_the_reading_the_constructor_builds(r: Reading) -> None:
    """The window builder's fast constructor: same fields, equality, hash, leaf bytes, and
    just as frozen."""
    fast = new_reading(r.seq, r.ts_ns, r.signal, r.value, r.unit, r.quality)
    assert type(fast) is Reading
    assert fast == r  # the same value object: equal even when it is NaN
    assert (fast.seq, fast.ts_ns, fast.signal, fast.unit, fast.quality) == (
        r.seq,
        r.ts_ns,
        r.signal,
        r.unit,
        r.quality,
    )
    assert fast.value is r.value
    assert hash(fast) == hash(r)
    assert encode_leaf(fast) == encode_leaf(r)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seq = 0  # type: ignore[misc] # the point: it is frozen


@given(
    st.floats(width=16) | st.floats(width=32) | st.floats(),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**64 - 1) | st.integers(-(2**63), 2**32),
)
def test_float16_and_float32_exact_values_match_cbor2(value: float, seq: int, ts: int) -> None:
    """The leaf's float rule (``_leaf_float``: one float32 round trip, then float16) over
    values that a half or a single holds exactly, as a Modbus float32 register gives."""
    r = Reading(seq, ts, "d1.t0", value, "", 0)
    assert encode_leaf(r) == _reference(r)


_ODD_VALUE = (
    st.floats(width=16)
    | st.floats(width=32)
    | st.floats()
    | st.text(max_size=4)
    | st.integers(-3, 3)
    | st.booleans()
)
_ODD = st.builds(
    Reading,
    st.integers(-5, 2**64 - 1),  # out of range too: the native encoder hands those back
    st.integers(-(2**64), 2**64 - 1),
    st.text(min_size=1, max_size=6),
    _ODD_VALUE,
    st.text(max_size=3),
    st.integers(-5, 2**64 - 1),
)


@given(st.lists(readings() | _ODD, max_size=30))
def test_a_windows_leaves_are_encode_leaf_of_each_reading(rs: list[Reading]) -> None:
    """``encode_leaves`` (the native encoder where it is built, ADR 0049) against
    ``encode_leaf``, the reference, reading by reading: every float width, text and int
    values, seqs, timestamps and qualities at and past their ranges."""
    assert encode_leaves(rs) == tuple(map(encode_leaf, rs))


def test_the_native_leaf_encoder_is_the_one_used_where_it_is_built() -> None:
    """With the extension built, ``encode_leaves`` is its answer (not the fallback's)."""
    ext = EXTENSION
    if ext is None:
        missing("the native extension was not built (no C compiler or OpenSSL headers)")
        return
    r = new_reading(70_000, 2**40, "d1.t0", 20.5, "", 0)
    calls: list[Reading] = []

    def fallback(x: Reading) -> bytes:
        calls.append(x)
        return encode_leaf(x)

    assert ext.encode_leaves([r], fallback) == (encode_leaf(r),) and not calls
    odd = dataclasses.replace(r, value=3)  # an int value: the fallback encodes it
    assert ext.encode_leaves([odd], fallback) == (encode_leaf(odd),) and calls == [odd]
