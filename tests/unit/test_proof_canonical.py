"""One canonical micro-proof: `factoryops verify` refuses every other encoding (issue 16).

A micro-proof copied on its way with one byte appended, a changed unprotected header, the
twin ECDSA signature (r, n - s) or a non-minimal CBOR head still carried a valid signature,
and the copies verified. ARCHITECTURE.md "One canonical form" pins one encoding; these tests
alter valid proofs every way CBOR allows and check that only that one passes. The hub side
is in test_hub_ingest.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import cbor2
import pytest
from cbor2._encoder import dumps as reference_dumps  # pure Python: RFC 8949's shortest floats
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cwt import COSE, COSEKey
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import Noncanonical, cborsafe, receipt_from_leaves, report_receipt
from attestation.microproof import (
    AnomalySummary,
    DriftTest,
    Gap,
    MicroProof,
    SignalStats,
    encode_payload,
    parse_microproof,
    verify_microproof_signature,
)
from attestation.native import EXTENSION
from attestation.signers import SoftwareSigner
from attestation.signers.base import TpmClock
from attestation.verify import TrustAnchors
from tests.cborvariants import (
    P256_N,
    altered_copies,
    encode_variant,
    high_s,
    proof_variants,
    widened,
)
from tests.conftest import missing
from tests.hubkit import Device

DEVICE = Device()
GENUINE, LEAVES, _ = DEVICE.window(4)
KEY = serialization.load_der_public_key(DEVICE.signer.public_key_der())
assert isinstance(KEY, ec.EllipticCurvePublicKey)
ANCHORS = TrustAnchors(device_keys=(KEY,))


def _verifies(data: bytes) -> None:
    verify_microproof_signature(parse_microproof(data), KEY)


def test_the_genuine_proof_verifies() -> None:
    _verifies(GENUINE)


@pytest.mark.parametrize("name", sorted(altered_copies(GENUINE)))
def test_an_altered_copy_of_a_signed_proof_is_refused_as_noncanonical(name: str) -> None:
    altered = altered_copies(GENUINE)[name]
    with pytest.raises(Noncanonical) as err:
        _verifies(altered)
    assert err.value.code == "noncanonical"


@pytest.mark.parametrize("name", sorted(altered_copies(GENUINE)))
def test_a_receipt_built_on_an_altered_copy_reports_the_noncanonical_link(name: str) -> None:
    rc = receipt_from_leaves(LEAVES, 1, altered_copies(GENUINE)[name])
    assert report_receipt(rc, ANCHORS).link == "noncanonical"
    assert report_receipt(receipt_from_leaves(LEAVES, 1, GENUINE), ANCHORS).valid


def test_an_untagged_proof_is_refused_as_noncanonical() -> None:
    with pytest.raises(Noncanonical, match="tag"):
        _verifies(cbor2.dumps(cbor2.loads(GENUINE).value, canonical=True))


def test_a_payload_in_another_encoding_is_refused_though_its_signature_holds() -> None:
    protected, _, payload, _ = cbor2.loads(GENUINE).value
    wide = b"\xbb" + len(cbor2.loads(payload)).to_bytes(8, "big") + payload[1:]  # map head, u64
    from attestation.cose import to_be_signed

    signature = DEVICE.signer.sign(to_be_signed(protected, wide))
    data = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, wide, signature]))
    with pytest.raises(Noncanonical, match="payload"):
        _verifies(data)


_VALUES = st.recursive(
    st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.booleans()
    | st.none(),
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(st.integers(-(2**63), 2**64 - 1), c, max_size=4)
        | st.dictionaries(st.text(max_size=8), c, max_size=4)
    ),
    max_leaves=12,
)


@given(_VALUES, st.data())
def test_the_variant_encoder_writes_the_deterministic_bytes_exactly_when_it_says_so(
    value: object, data: st.DataObject
) -> None:
    """The oracle of the property tests: a draw it calls canonical is the deterministic
    encoding ``cborsafe.dumps`` writes (RFC 8949 §4.2.1 for maps whose keys share one type,
    as every map of the proof format does), any other draw is not, and every draw decodes
    to the same value."""
    got = data.draw(encode_variant(value))
    want = cborsafe.dumps(value)
    assert (got.data == want) == got.canonical
    assert cborsafe.dumps(cbor2.loads(got.data)) == want


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_only_the_canonical_encoding_of_a_proof_verifies(data: st.DataObject) -> None:
    """Re-encode a valid proof every way CBOR allows (wider heads, indefinite lengths,
    unsorted maps, wider floats; a high s, a non-empty unprotected header, no tag, bytes
    after it), each copy validly signed: verify accepts it iff it is the canonical one."""
    variant = data.draw(proof_variants(GENUINE, DEVICE.signer.sign))
    if variant.canonical:
        _verifies(variant.data)
    else:
        with pytest.raises(Noncanonical):
            _verifies(variant.data)


def test_the_software_signer_writes_low_s() -> None:
    """Half of all ECDSA signatures have a high s; 64 in a row low is chance 2^-64."""
    signer = SoftwareSigner.generate()
    sigs = [signer.sign(b"to be signed %d" % i) for i in range(64)]
    assert not any(high_s(s) for s in sigs)
    assert all(0 < int.from_bytes(s[32:], "big") <= P256_N // 2 for s in sigs)


def _cwt_key(private: bool) -> COSEKey:
    signer = DEVICE.signer
    pem = (
        signer.private_pem()
        if private
        else KEY.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return COSEKey.from_pem(pem, alg="ES256", kid=parse_microproof(GENUINE).kid)


def test_python_cwt_verifies_our_canonical_proofs() -> None:
    payload = cbor2.loads(GENUINE).value[2]
    assert COSE.new().decode(GENUINE, _cwt_key(private=False)) == payload


def test_a_proof_python_cwt_signs_passes_our_check_exactly_when_its_s_is_low() -> None:
    """Interoperability the other way: python-cwt writes the same deterministic CBOR, and
    its ECDSA leaves s as it comes (high half the time), which we refuse."""
    protected, _, payload, _ = cbor2.loads(GENUINE).value
    seen = set()
    for _ in range(16):
        data = COSE.new().encode_and_sign(
            payload, _cwt_key(private=True), protected=cbor2.loads(protected)
        )
        sig = cbor2.loads(data).value[3]
        if high_s(sig):
            with pytest.raises(Noncanonical, match="high s"):
                _verifies(data)
        else:
            _verifies(data)
        seen.add(high_s(sig))
    assert seen == {True, False}  # both cases met: chance 2^-15 that they are not


_STAT = (
    st.floats(width=16)
    | st.floats(width=32)
    | st.floats()
    | st.sampled_from([0.0, -0.0, 40000.0, 65504.0, 32768.0, 2.0**-24, 2.0**-14, 1e300])
)
_STATS = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.tuples(st.integers(0, 2**63 - 1), _STAT, _STAT, _STAT, _STAT),
    max_size=20,
)
_EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "anomaly": st.builds(AnomalySummary, st.integers(0, 9), st.floats(), st.floats()),
        "drift": st.builds(DriftTest, st.just("ks"), st.floats(), st.floats(), st.booleans()),
        "tpm_clock": st.builds(
            TpmClock, st.integers(0, 2**40), st.integers(0, 9), st.integers(0, 9), st.booleans()
        ),
        "gaps": st.lists(
            st.builds(Gap, st.integers(0, 9), st.integers(0, 9), st.just("crash")), max_size=2
        ).map(tuple),
    },
)


def _reference_payload(mp: MicroProof) -> bytes:
    """The reference: the payload map as cbor2's pure-Python encoder writes it (RFC 8949's
    shortest floats, which its C encoder misses for 32768.0 .. 65504.0), key 12's values as
    lists."""
    want = cbor2.loads(encode_payload(replace(mp, stats={})))
    if mp.stats:
        want[12] = {s: list(v) for s, v in mp.stats.items()}
    return reference_dumps(want, canonical=True)


@settings(max_examples=300, deadline=None)
@given(_STATS, _EXTRAS)
def test_the_statistics_are_signed_as_rfc_8949_writes_the_arrays_of_their_fields(
    stats: dict[str, tuple[int, float, float, float, float]], extras: dict[str, Any]
) -> None:
    """``encode_payload`` (key 12 by the native ``stats_map`` when it is built and takes
    every value, spliced between the keys below and above it; else cbor2 over plain tuples)
    against cbor2's pure-Python encoder over lists, with and without the keys that follow
    12."""
    signed = {s: SignalStats(*v) for s, v in stats.items()}
    mp = MicroProof(1, 0, 9, 1, 2, 10, b"r" * 32, b"p" * 32, stats=signed, **extras)
    assert encode_payload(mp) == _reference_payload(mp)


def test_the_native_statistics_map_takes_a_gateways_values() -> None:
    """The values a Modbus float32 tag gives (and m2 = 0.0 for a signal read once) take the
    native path, a half-exact 40000.0 as a half; -0.0 is left to Python."""
    ext = EXTENSION
    if ext is None:
        missing("the native extension was not built (no C compiler or OpenSSL headers)")
        return
    one = {
        f"d1.t{i}": SignalStats(1, i / 8 - 3.3, 0.0, i / 8 - 3.3, i / 8 - 3.3) for i in range(50)
    }
    assert ext.stats_map(one) == cbor2.dumps({k: list(v) for k, v in one.items()}, canonical=True)
    big = {"x": SignalStats(1, 40000.0, 0.0, 40000.0, -65504.0)}
    assert ext.stats_map(big) == reference_dumps({"x": list(big["x"])}, canonical=True)
    assert b"\xf9\x78\xe2" in ext.stats_map(big)
    assert ext.stats_map({"x": SignalStats(1, 0.0, 0.0, -0.0, -0.0)}) is None
    assert ext.stats_map({"x": SignalStats(True, 1.0, 0.0, 1.0, 1.0)}) is None  # bool


def test_a_float_cbor2s_c_encoder_widens_is_signed_in_its_shortest_form() -> None:
    """cbor2's C encoder writes a float of 32768.0 .. 65504.0 that a half holds exactly
    (40000.0: ``f9 78e2``) as a float32 (``fa 471c4000``): not RFC 8949's shortest form, so a
    strict third-party verifier refused such proofs, and the hub took the widened copy a
    signer could make as canonical. Signers now write the half, and only the half passes."""
    dev = Device()
    extras: dict[str, Any] = {
        "anomaly": AnomalySummary(1, 40000.0, 32768.0),
        "drift": DriftTest("ks", 60000.0, 0.5, True),
        "values": (40000.0, -65504.0, 32768.0),
    }
    cose, _, _ = dev.window(3, **extras)
    key = serialization.load_der_public_key(dev.signer.public_key_der())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    payload = cbor2.loads(cose).value[2]
    assert payload == reference_dumps(cbor2.loads(payload), canonical=True)
    assert b"\xf9\x78\xe2" in payload and b"\xfa\x47\x1c\x40\x00" not in payload
    verify_microproof_signature(parse_microproof(cose), key)
    legacy = widened(cose, dev.signer.sign)
    assert b"\xfa\x47\x1c\x40\x00" in legacy
    with pytest.raises(Noncanonical, match="payload"):
        verify_microproof_signature(parse_microproof(legacy), key)
