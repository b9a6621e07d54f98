"""Per-reading receipts: every honest receipt verifies; any single-bit change is rejected."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import struct
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import (
    GENESIS_PREV,
    BrokenLink,
    KeyFileError,
    MalformedInput,
    MicroProof,
    Reading,
    Receipt,
    TrustAnchors,
    build_receipt,
    chain_hash,
    encode_leaf,
    leaf_hash,
    merkle,
    receipt_from_json,
    report_receipt,
    sign_microproof,
    verify_chain,
    verify_receipt,
)
from attestation.certs import issue_device_certificate, make_fleet_ca
from attestation.microproof import Gap, compute_stats
from attestation.signers import SoftwareSigner
from tests.strategies import windows

SIGNER = SoftwareSigner.generate()
_PUB = serialization.load_der_public_key(SIGNER.public_key_der())
assert isinstance(_PUB, ec.EllipticCurvePublicKey)
ANCHORS = TrustAnchors(device_keys=(_PUB,))


def _proof(
    rs: list[Reading],
    *,
    window: int = 0,
    prev: bytes = GENESIS_PREV,
    root: bytes | None = None,
    gaps: tuple[Gap, ...] = (),
) -> bytes:
    hashes = [leaf_hash(encode_leaf(r)) for r in rs]
    mp = MicroProof(
        window=window,
        first_seq=rs[0].seq,
        last_seq=rs[-1].seq,
        first_ts_ns=rs[0].ts_ns,
        last_ts_ns=rs[-1].ts_ns,
        count=len(rs),
        root=root or merkle.root(hashes),
        prev=prev,
        stats=compute_stats(rs),
        gaps=gaps,
    )
    return sign_microproof(mp, SIGNER, iat=1_700_000_000)


def _receipt(rs: list[Reading], i: int) -> Receipt:
    return build_receipt(rs, i, _proof(rs))


def _link(receipt: Receipt) -> str | None:
    return report_receipt(receipt, ANCHORS).link


def _flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=50, deadline=None)
@given(windows(), st.data())
def test_every_honest_receipt_verifies(rs: list[Reading], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(rs) - 1))
    verdict = report_receipt(receipt_from_json(_receipt(rs, i).dumps()), ANCHORS)
    assert verdict.valid, verdict.error
    assert verdict.checked == ("key", "signature", "reading", "inclusion", "root")


@settings(max_examples=60, deadline=None)
@given(windows(), st.data())
def test_any_single_bit_change_in_the_reading_is_rejected(
    rs: list[Reading], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(rs) - 1))
    rc = _receipt(rs, i)
    r = rc.reading
    field = data.draw(st.sampled_from(["seq", "ts_ns", "value", "signal", "unit", "quality"]))
    if field in ("seq", "ts_ns", "quality"):
        changed = dataclasses.replace(
            r, **{field: getattr(r, field) ^ (1 << data.draw(st.integers(0, 30)))}
        )
    elif field == "value":
        (bits,) = struct.unpack(">Q", struct.pack(">d", r.value))
        bits ^= 1 << data.draw(st.integers(0, 63))
        changed = dataclasses.replace(r, value=struct.unpack(">d", struct.pack(">Q", bits))[0])
    else:
        text = getattr(r, field).encode() or b"\x00"
        j = data.draw(st.integers(0, len(text) - 1))
        flipped = _flip(text, j * 8 + data.draw(st.integers(0, 6)))
        changed = dataclasses.replace(r, **{field: flipped.decode("utf-8", "replace")})
    if changed == r:  # e.g. a flip that decodes back to the same text
        return
    assert _link(dataclasses.replace(rc, reading=changed)) in {"reading", "root", "format"}


@settings(max_examples=40, deadline=None)
@given(windows(), st.data())
def test_any_single_bit_change_in_the_path_is_rejected(
    rs: list[Reading], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(rs) - 1))
    rc = _receipt(rs, i)
    if not rc.path:
        return
    j = data.draw(st.integers(0, len(rc.path) - 1))
    path = list(rc.path)
    path[j] = _flip(path[j], data.draw(st.integers(0, 255)))
    assert _link(dataclasses.replace(rc, path=tuple(path))) == "root"


@settings(max_examples=30, deadline=None)
@given(windows(max_size=12), st.data())
def test_a_signed_but_wrong_root_is_named(rs: list[Reading], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(rs) - 1))
    good = merkle.root([leaf_hash(encode_leaf(r)) for r in rs])
    bad = _flip(good, data.draw(st.integers(0, 255)))
    rc = build_receipt(rs, i, _proof(rs, root=bad))
    assert _link(rc) == "root"


@settings(max_examples=60, deadline=None)
@given(windows(max_size=8), st.data())
def test_any_single_bit_change_in_the_signed_micro_proof_is_rejected(
    rs: list[Reading], data: st.DataObject
) -> None:
    rc = _receipt(rs, 0)
    bit = data.draw(st.integers(0, len(rc.microproof) * 8 - 1))
    link = _link(dataclasses.replace(rc, microproof=_flip(rc.microproof, bit)))
    assert link in {"signature", "format", "key", "unsupported", "noncanonical"}


def test_an_unknown_device_key_is_named() -> None:
    rs = [Reading(0, 1, "flow", 1.0, "m3/h")]
    verdict = report_receipt(_receipt(rs, 0), TrustAnchors())
    assert verdict.link == "key" and "not a trusted device key" in (verdict.error or "")


def test_the_reading_link_names_a_value_outside_the_signed_range() -> None:
    rs = [Reading(10 + k, 100 + k, "flow", float(k), "m3/h") for k in range(4)]
    rc = _receipt(rs, 2)
    verdict = report_receipt(
        dataclasses.replace(rc, reading=dataclasses.replace(rc.reading, value=99.0)), ANCHORS
    )
    assert verdict.link == "reading"
    assert "outside the signed range" in (verdict.error or "")


def test_a_device_certificate_from_a_pinned_fleet_ca_is_trusted() -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_fleet_ca(ca_key, "test fleet", now=now)
    cert = issue_device_certificate(ca_key, ca, SIGNER.public_key_der(), "software", now=now)
    rs = [Reading(0, 1, "flow", 1.0, "m3/h"), Reading(1, 2, "flow", 2.0, "m3/h")]
    rc = dataclasses.replace(
        _receipt(rs, 1), certificates=(cert.public_bytes(serialization.Encoding.DER),)
    )
    verdict = report_receipt(rc, TrustAnchors(fleet_cas=(ca,)))
    assert verdict.valid and verdict.key_kind == "software"
    strict = report_receipt(rc, TrustAnchors(fleet_cas=(ca,), allow_software_keys=False))
    assert strict.link == "key" and "software key" in (strict.error or "")
    other_ca = make_fleet_ca(ec.generate_private_key(ec.SECP256R1()), "other", now=now)
    assert report_receipt(rc, TrustAnchors(fleet_cas=(other_ca,))).link == "certificate"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("path"), "path"),
        (lambda d: d.update(leaf_index=-1), "leaf_index"),
        (lambda d: d.update(microproof="not base64!"), "microproof"),
        (lambda d: d["reading"].update(value="hot"), "reading.value"),
        (lambda d: d["path"].append(7), "path[0]"),
    ],
)
def test_a_malformed_receipt_names_the_field(mutate: object, field: str) -> None:
    rs = [Reading(0, 1, "flow", 1.0, "m3/h")]
    doc = json.loads(_receipt(rs, 0).dumps())
    if field == "path[0]":
        doc["path"] = [7]
    else:
        mutate(doc)  # type: ignore[operator]  # parametrized mutators are typed as objects
    with pytest.raises(MalformedInput) as err:
        receipt_from_json(doc)
    assert err.value.field == field


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_receipt_parser_never_crashes_on_hostile_json(doc: object) -> None:
    with contextlib.suppress(MalformedInput):
        receipt_from_json(doc)


def test_chain_verifies_and_a_broken_prev_is_named() -> None:
    w0 = [Reading(0, 1, "a", 1.0, "u"), Reading(1, 2, "a", 2.0, "u")]
    w1 = [Reading(2, 3, "a", 3.0, "u")]
    p0 = _proof(w0)
    p1 = _proof(w1, window=1, prev=chain_hash(p0))
    verify_chain([p0, p1])
    forged = _proof(w1, window=1, prev=bytes(32))
    with pytest.raises(BrokenLink) as err:
        verify_chain([p0, forged])
    assert err.value.link == "chain"


def test_a_seq_hole_needs_a_gap_record() -> None:
    w0 = [Reading(0, 1, "a", 1.0, "u")]
    w1 = [Reading(5, 3, "a", 3.0, "u")]
    p0 = _proof(w0)
    with pytest.raises(BrokenLink, match="gap"):
        verify_chain([p0, _proof(w1, window=1, prev=chain_hash(p0))])
    covered = _proof(w1, window=1, prev=chain_hash(p0), gaps=(Gap(1, 4, "agent restart"),))
    verify_chain([p0, covered])


def test_verify_receipt_raises_the_first_broken_link() -> None:
    rs = [Reading(0, 1, "a", 1.0, "u"), Reading(1, 2, "a", 2.0, "u")]
    rc = _receipt(rs, 0)
    verify_receipt(rc, ANCHORS)
    bad = dataclasses.replace(rc, microproof=cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""])))
    with pytest.raises(MalformedInput):
        verify_receipt(bad, ANCHORS)


def test_the_software_key_file_must_not_be_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    SoftwareSigner.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SoftwareSigner.load(path).public_key_der()
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"others can read"):
        SoftwareSigner.load(path)


@pytest.mark.parametrize(
    "values",
    [
        [float("inf"), float("-inf")],  # fsum raised ValueError: the window was never sealed
        [1e308, 1e308, -1e308],  # fsum raised OverflowError on the finite intermediate sum
        [float("-inf"), 1.0],
    ],
)
def test_infinite_and_huge_values_still_seal_a_window_whose_receipts_verify(
    values: list[float],
) -> None:
    rs = [Reading(k, 100 + k, "flow", v, "m3/h") for k, v in enumerate(values)]
    for i in range(len(rs)):
        assert report_receipt(_receipt(rs, i), ANCHORS).valid


def test_a_window_whose_value_cbor2_writes_as_float32_verifies() -> None:
    """cbor2's C encoder writes 60000.0 (float16-exact) as float32; the verifier's native
    decoder took the signer's float32 for a non-canonical encoding and refused its own
    proof (found by Hypothesis in CI). Signers now write the half (``cborsafe.dumps``)."""
    rs = [Reading(0, 0, "0", 60000.0, "u"), Reading(1, 1, "0", 40000.0, "u")]
    verdict = report_receipt(_receipt(rs, 1), ANCHORS)
    assert verdict.valid, verdict.error
