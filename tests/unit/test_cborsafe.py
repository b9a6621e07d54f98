"""attestation.cborsafe: strict UTF-8 without cbor2 5.x's leak on the error path.

cbor2 5.9's C decoder leaks ~600 bytes per refused invalid-UTF-8 string
(agronholm/cbor2#257; found by fuzz/targets.py ``upload``, which ran out of memory).
"""

from __future__ import annotations

import base64
import decimal
import tracemalloc

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation import cborsafe
from attestation.errors import MalformedInput
from attestation.leafbatch import sequence_root
from attestation.reading import decode_leaf

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
