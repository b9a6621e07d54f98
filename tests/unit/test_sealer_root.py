"""The sealer's Merkle root comes from the C window check when it is built (issue 17, item
6): the same root as the reference, ``merkle.root`` over the RFC 9162 leaf hashes, byte for
byte, and the signed payload is the one the reference root gives."""

from __future__ import annotations

import math
import struct

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.connectors.base import Sample
from agent.sealer import _root, seal
from agent.window import WindowBuilder
from attestation import merkle
from attestation.leafbatch import NATIVE, native_verdict
from attestation.microproof import decode_payload, encode_payload
from attestation.reading import Reading, encode_leaf, leaf_hash
from attestation.signers import SoftwareSigner

SIGNER = SoftwareSigner.generate()
_NAN_PAYLOAD = struct.unpack(">d", b"\x7f\xf8\x00\x00\x00\x00\x00\x01")[0]
VALUES = (
    st.sampled_from([0.0, -0.0, 65504.0, 40000.0, math.inf, -math.inf, math.nan, _NAN_PAYLOAD])
    | st.floats(width=32)
    | st.floats()
    | st.text(max_size=5)
)
READINGS = st.lists(
    st.tuples(st.sampled_from(["a", "b.c", "d" * 30, "é", "x" * 300]), VALUES),
    min_size=1,
    max_size=80,
)


def _reference_root(leaves: list[bytes]) -> bytes:
    return merkle.root([leaf_hash(x) for x in leaves])


@settings(max_examples=150)
@given(READINGS, st.integers(0, 2**40))
def test_a_sealed_window_signs_the_reference_root(
    values: list[tuple[str, float | str]], first_seq: int
) -> None:
    builder = WindowBuilder(10_000, 10_000, next_seq=first_seq)
    ts = 1_700_000_000_000_000_000
    builder.add([Sample(s, v, "u", ts + i) for i, (s, v) in enumerate(values)], 0)
    (window,) = builder.flush()
    leaves = [encode_leaf(r) for r in window.readings]
    assert _root(leaves, first_seq) == _reference_root(leaves)
    sealed = seal(window, index=3, prev=bytes(32), signer=SIGNER, iat=7)
    assert list(sealed.leaves) == leaves
    payload = cbor2.loads(sealed.cose).value[2]
    mp = decode_payload(payload)
    assert mp.root == _reference_root(leaves)
    assert payload == encode_payload(mp)


def test_the_root_comes_from_the_native_check_when_it_is_built() -> None:
    """Which path the sealer takes here: C when built (a leaf past the hub's limits, which
    C refuses, falls back to Python and still gets the reference root)."""
    leaves = [encode_leaf(Reading(i, 10**18, "s", 1.5, "", 0)) for i in range(3)]
    too_long = [*leaves, encode_leaf(Reading(3, 10**18, "s" * 10_000, 1.5, "", 0))]
    assert native_verdict(leaves, 0) == (_reference_root(leaves) if NATIVE else None)
    assert native_verdict(too_long, 0) == (3 if NATIVE else None)
    assert _root(too_long, 0) == _reference_root(too_long)
