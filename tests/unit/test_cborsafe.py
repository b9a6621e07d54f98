"""attestation.cborsafe: strict UTF-8 without cbor2 5.x's leak on the error path.

cbor2 5.9's C decoder leaks ~600 bytes per refused invalid-UTF-8 string
(agronholm/cbor2#257; found by fuzz/targets.py ``upload``, which ran out of memory).
"""

from __future__ import annotations

import base64
import decimal
import math
import random
import struct
import tracemalloc

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation import cborsafe
from attestation.errors import MalformedInput
from attestation.leafbatch import sequence_root
from attestation.reading import decode_leaf
from tests.cborvariants import encode_variant
from tests.conftest import missing
from tests.hubkit import Device, body, same_cbor_item

HOSTILE = [
    b"\x62\xff\xff",  # a text string that is not UTF-8
    b"\x82\x01\x62\xed\xa0",  # truncated surrogate inside an array
    b"\xa1\x62\xc0\xaf\x01",  # overlong encoding as a map key
    b"\xd8\x18\x62\xff\xfe",  # inside a tag
    b"\xa1\xa1\x61a\x62\xed\xa0\x80\x01",  # an encoded surrogate in a map used as a key
]


@pytest.mark.parametrize("data", HOSTILE)
def test_invalid_utf8_is_refused_like_cbor2_refuses_it(data: bytes) -> None:
    with pytest.raises(cbor2.CBORDecodeValueError, match="unicode string"):
        cborsafe.loads(data)


def test_refusing_invalid_utf8_does_not_grow_memory() -> None:
    for data in HOSTILE:  # warm up caches and interned objects first
        with pytest.raises(cbor2.CBORDecodeError):
            cborsafe.loads(data)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(4000):
            for data in HOSTILE:
                with pytest.raises(cbor2.CBORDecodeError):
                    cborsafe.loads(data)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # cbor2.loads on the same 20,000 inputs keeps ~12 MB; what is left here is noise
    assert grown < 256 * 1024, f"{grown} bytes kept after 20,000 refused decodes"


@given(
    st.recursive(
        st.text() | st.binary() | st.integers(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_valid_cbor_decodes_exactly_as_cbor2_does(value: object) -> None:
    data = cbor2.dumps(value)
    assert cborsafe.loads(data) == cbor2.loads(data)


def test_a_literal_replacement_character_is_valid_text() -> None:
    assert cborsafe.loads(b"\x63\xef\xbf\xbd") == "\ufffd"


# found by fuzz/targets.py leafseq: a tag-4 decimal fraction whose parts are arrays made
# cbor2 raise decimal.InvalidOperation, which no caller caught (a hostile leaf -> a crash)
_BAD_DECIMAL = base64.b64decode(
    "0MSCgoKCgoKCgoKDoi2CgisAAQEAAAABgoyCghIAgoKCgoKCgtQAAAAAAQEBAAAAgoKCgoMAAMvLy8vLy8vLy8vLy8vL"
    "y8vLy8vLYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYGBgYMvLy8vL"
    "y8vLy8vLy8vLy8vLy8vLy8vLy8vLy8vLy8vLAAAAAAAAAQEBB9A="
)


def test_errors_from_tagged_types_are_decode_errors() -> None:
    with pytest.raises(decimal.InvalidOperation):
        cbor2.loads(_BAD_DECIMAL)  # what cbor2 itself does
    with pytest.raises(cbor2.CBORDecodeValueError, match="InvalidOperation"):
        cborsafe.loads(_BAD_DECIMAL)
    with pytest.raises(MalformedInput, match="leaf: not CBOR"):
        decode_leaf(_BAD_DECIMAL)
    with pytest.raises(MalformedInput, match=r"leaves\[0\]"):
        sequence_root(_BAD_DECIMAL[1:], 1, 0)


# found by the same target after that fix: a shared-reference tag (28/29) that contains
# itself, used where a hashable key is needed, makes cbor2 raise RuntimeError
_SELF_TAG = base64.b64decode(
    "46PjzMzMKkHjo8zMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM"
    "zMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzOOj48zMzCpB"
    "4+GBAMzMzCpB4+GBAAAAYTE="
)


def test_a_self_referencing_tag_is_a_decode_error() -> None:
    count, blob = 1 + _SELF_TAG[0] % 8, _SELF_TAG[1:]
    with pytest.raises(MalformedInput):
        sequence_root(blob, count, 0, native=False)


# A map whose key cbor2 decodes as a tag over an array (a tuple there), found by
# fuzz/targets.py ``microproof`` (2026-12-07): ``loads_checked`` writes it again to compare,
# and that once made the key a tag over a list, whose hash failed. cbor2 5.9's C
# ``CBORTag.__hash__`` then kept the tag in its per-thread set of tags being hashed, and a
# later tag allocated at the same address was refused as self-referencing (RuntimeError).
_TAG_KEY = bytes.fromhex(
    "ab010101020003000403051b17979cfe3638424006ffff00040000d284300000006500000035370000"
)


def test_a_tag_over_an_array_as_a_map_key_leaves_tag_hashing_working() -> None:
    obj, canonical = cborsafe.loads_checked(_TAG_KEY)
    assert canonical is False  # break markers and unsorted keys: not deterministic CBOR
    assert cbor2.CBORTag(18, (-17, 0, 0, 0)) in obj
    for i in range(3000):  # fresh tags take the freed addresses: any stale entry is hit
        hash(cbor2.CBORTag(2, i))


# --- the native fast path (decode_plain in attestation/_native/leafcheck.c) -----------------
# It must build exactly what cbor2 builds for a plain item, and hand everything else to cbor2
# (None): a None only costs speed, a wrong item would be a wrong answer.

_TAG = 18  # the one tag it builds (COSE_Sign1's); other tags are cbor2's
_SCALARS = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(width=16)
    | st.floats(width=32)
    | st.text()
    | st.binary()
    | st.booleans()
    | st.none()
)
_ITEMS = st.recursive(
    _SCALARS,
    lambda c: (
        st.lists(c, max_size=6)
        | st.dictionaries(st.integers(-(2**40), 2**40) | st.text() | st.binary(), c, max_size=6)
        | st.builds(cbor2.CBORTag, st.sampled_from([_TAG, _TAG, 99, 1000]), c)
    ),
    max_leaves=30,
)


def _is_plain(value: object) -> bool:
    """What decode_plain builds itself (an item cbor2.dumps wrote from this value)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) - 1 <= value < 2**64
    if isinstance(value, list):
        return all(map(_is_plain, value))
    if isinstance(value, dict):
        return all(type(k) in (int, str, bytes) and _is_plain(k) for k in value) and all(
            map(_is_plain, value.values())
        )
    if isinstance(value, cbor2.CBORTag):
        return value.tag == _TAG and _is_plain(value.value)
    return True


@pytest.fixture
def _fast() -> None:
    if not cborsafe.FAST:
        missing("the native extension was not built (no C compiler or OpenSSL headers)")


def _agrees(data: bytes) -> tuple[object, bool] | None:
    """decode_plain's answer for ``data``, checked against cbor2 when it has one: the same
    item, and "canonical" exactly when ``cborsafe.dumps`` writes these bytes."""
    fast = cborsafe.decode_plain(data)
    if fast is not None:
        reference = cborsafe.loads_cbor2(data)
        assert same_cbor_item(fast[0], reference), data.hex()
        assert fast[1] == (cborsafe.dumps(reference) == data), data.hex()
    return fast


@pytest.mark.usefixtures("_fast")
@given(_ITEMS, st.booleans())
def test_the_fast_path_builds_what_cbor2_builds_and_takes_every_plain_item(
    value: object, canonical: bool
) -> None:
    data = cbor2.dumps(value, canonical=canonical)
    fast = _agrees(data)
    assert (fast is not None) == _is_plain(value), (value, data.hex())
    assert same_cbor_item(cborsafe.loads(data), cborsafe.loads_cbor2(data))


@pytest.mark.usefixtures("_fast")
@given(_ITEMS, st.data())
def test_a_corrupted_item_is_decoded_as_cbor2_decodes_it_or_left_to_cbor2(
    value: object, data: st.DataObject
) -> None:
    """Bit flips, cuts, insertions and trailing bytes: the fast path never answers what
    cbor2 would not (it answers None and cbor2 decides, refusals included)."""
    raw = bytearray(cbor2.dumps(value))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.integers(0, len(raw)))
        match data.draw(st.sampled_from(["flip", "cut", "insert"])):
            case "flip" if where < len(raw):
                raw[where] ^= 1 << data.draw(st.integers(0, 7))
            case "cut":
                del raw[where:]
            case _:
                raw[where:where] = data.draw(st.binary(min_size=1, max_size=3))
    _agrees(bytes(raw))


@pytest.mark.usefixtures("_fast")
@given(_ITEMS, st.data())
def test_the_fast_path_tells_the_deterministic_encoding_from_every_other(
    value: object, data: st.DataObject
) -> None:
    """Wider heads, indefinite lengths, unsorted maps, wider floats (tests/cborvariants.py):
    decode_plain calls an encoding canonical exactly when cbor2's canonical encoder would
    write it, so the hub's check of a micro-proof's one form costs no re-encoding (ADR 0013)."""
    variant = data.draw(encode_variant(value))
    fast = _agrees(variant.data)
    if fast is not None:
        assert fast[1] == variant.canonical, variant.data.hex()
    got, canonical = cborsafe.loads_checked(variant.data)
    assert same_cbor_item(got, cborsafe.loads_cbor2(variant.data))
    assert canonical == variant.canonical


def test_bytes_after_the_item_are_refused() -> None:
    """cbor2 5.x stops after the first item; a byte appended to a signed proof went unseen."""
    with pytest.raises(cborsafe.TrailingBytes, match="1 byte"):
        cborsafe.loads(cbor2.dumps([1, "a"]) + b"\x00")
    with pytest.raises(cborsafe.TrailingBytes, match="2 byte"):
        cborsafe.loads_checked(b"\x5f\x41a\xff\x01\x02")  # cbor2's path (indefinite)


@pytest.mark.usefixtures("_fast")
@given(st.binary(max_size=64))
def test_any_bytes_are_decoded_as_cbor2_decodes_them_or_left_to_cbor2(raw: bytes) -> None:
    _agrees(raw)


@pytest.mark.usefixtures("_fast")
@pytest.mark.parametrize(
    ("data", "why"),
    [
        *((h, "invalid UTF-8") for h in HOSTILE),
        (b"\x9f\x01\xff", "an indefinite-length array"),
        (b"\x5f\x41a\xff", "an indefinite-length byte string"),
        (b"\xf7", "undefined"),
        (b"\xf8\x20", "a simple value"),
        (b"\xc1\x1a\x00\x00\x00\x01", "a tag cbor2 gives a meaning (epoch time)"),
        (b"\xa1\x81\x01\x02", "an array as a map key (cbor2 makes it a tuple)"),
        (b"\x01\x02", "bytes after the item"),
        (b"\x82\x01", "a truncated array"),
        (b"\x5a\xff\xff\xff\xff", "a length past the end"),
        (b"\x3b\x80\x00\x00\x00\x00\x00\x00\x00", "a negative integer below -2**63 - 1"),
        (b"\x81" * 33 + b"\x01", "nesting deeper than 32"),
    ],
)
def test_what_the_fast_path_leaves_to_cbor2(data: bytes, why: str) -> None:
    assert cborsafe.decode_plain(data) is None, why


@pytest.mark.usefixtures("_fast")
def test_the_hubs_inputs_take_the_fast_path() -> None:
    """An upload body, a COSE micro-proof, its protected header and its payload: what the
    hub decodes a proof at a time is all plain, so none of it waits for cbor2."""
    dev = Device()
    cose_bytes, leaves, _ = dev.window(5)
    sign1 = cborsafe.loads_cbor2(cose_bytes).value
    for what, data in [
        ("upload body", body((cose_bytes, leaves))),
        ("COSE_Sign1", cose_bytes),
        ("protected header", sign1[0]),
        ("payload", sign1[2]),
    ]:
        assert _agrees(data) is not None, what


@pytest.mark.usefixtures("_fast")
def test_a_deep_item_is_still_decoded_by_cbor2() -> None:
    data = b"\x81" * 40 + b"\x01"
    assert cborsafe.decode_plain(data) is None
    item = cborsafe.loads(data)
    for _ in range(40):
        item = item[0]
    assert item == 1


def _shortest_float(x: float) -> bytes:
    """RFC 8949 §4.2.1 (and §4.2.2 for NaN), from the rule itself: the first of half, single
    and double that gives back exactly ``x``, sign included; NaN only as ``f9 7e00``."""
    if math.isnan(x):
        return b"\xf9\x7e\x00"
    for ib, fmt in ((0xF9, ">e"), (0xFA, ">f"), (0xFB, ">d")):
        try:
            packed = struct.pack(fmt, x)
        except OverflowError:
            continue
        back = struct.unpack(fmt, packed)[0]
        if back == x and math.copysign(1.0, back) == math.copysign(1.0, x):
            return bytes((ib,)) + packed
    raise AssertionError(f"{x!r} fits no width")


def test_dumps_writes_every_float_in_its_shortest_exact_form() -> None:
    """Every binary16 value (cbor2's C encoder widened 32768.0 .. 65504.0 to float32), and
    random float32 and float64 bit patterns, as RFC 8949's rule says; the native decoder
    calls exactly those bytes canonical."""
    rng = random.Random(8949)
    halves = [struct.unpack(">e", h.to_bytes(2, "big"))[0] for h in range(0x10000)]
    singles = [struct.unpack(">f", rng.getrandbits(32).to_bytes(4, "big"))[0] for _ in range(5000)]
    doubles = [struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0] for _ in range(5000)]
    for x in halves + singles + doubles:
        assert cborsafe.dumps(x) == _shortest_float(x), x
    assert cborsafe.dumps({1: [40000.0, (-65504.0,)]}).hex() == "a10182f978e281f9fbff"
    for x in (40000.0, -32768.0, 65504.0, 32769.0, 20.5):
        assert cborsafe.loads_checked(_shortest_float(x)) == (x, True)
    assert cborsafe.loads_checked(b"\xfa\x47\x1c\x40\x00") == (40000.0, False)  # cbor2's C form


def test_a_float_subclass_is_written_as_the_float_it_is() -> None:
    """numpy's float64 is a float subclass: it must not reach cbor2's widening either."""
    import numpy as np

    assert cborsafe.dumps({1: np.float64(40000.0), 2: [np.float64(0.5)]}) == bytes.fromhex(
        "a201f978e20281f93800"
    )
