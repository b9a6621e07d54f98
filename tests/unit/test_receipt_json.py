"""Receipts for any value: a non-finite float and a text value as JSON (ARCHITECTURE.md,
"Per-reading receipt"), round trips through strict JSON, and verification of both forms.

A reading whose value was NaN had no receipt at all: the hub answered 500 "Out of range
float values are not JSON compliant" (issue 16).
"""

from __future__ import annotations

import json
import math

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import (
    MalformedInput,
    Reading,
    TrustAnchors,
    build_receipt,
    receipt_from_json,
    report_receipt,
)
from attestation.receipt import reading_json
from tests.hubkit import Device

DEVICE = Device()
_PUB = serialization.load_der_public_key(DEVICE.signer.public_key_der())
assert isinstance(_PUB, ec.EllipticCurvePublicKey)
ANCHORS = TrustAnchors(device_keys=(_PUB,))


def _strict(text: str) -> object:
    """json.loads that refuses NaN and Infinity literals (not JSON, RFC 8259 §6)."""

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _signed(values: list[float | str]) -> list[Reading]:
    return [
        Reading(DEVICE.next_seq + i, DEVICE.t_ns + i, "state" if isinstance(v, str) else "flow",
                v, "", 0)
        for i, v in enumerate(values)
    ]  # fmt: skip


def _receipt_for(values: list[float | str], index: int) -> tuple[str, Reading]:
    from attestation import merkle
    from attestation.microproof import MicroProof, compute_stats, sign_microproof
    from attestation.reading import encode_leaf, leaf_hash

    rs = _signed(values)
    mp = MicroProof(
        window=0,
        first_seq=rs[0].seq,
        last_seq=rs[-1].seq,
        first_ts_ns=rs[0].ts_ns,
        last_ts_ns=rs[-1].ts_ns,
        count=len(rs),
        root=merkle.root([leaf_hash(encode_leaf(r)) for r in rs]),
        prev=bytes(32),
        stats=compute_stats(rs),
    )
    cose = sign_microproof(mp, DEVICE.signer, iat=1)
    return build_receipt(rs, index, cose).dumps(), rs[index]


@pytest.mark.parametrize(
    ("value", "written"),
    [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")],
)
def test_a_non_finite_value_is_a_json_string_and_its_receipt_verifies(
    value: float, written: str
) -> None:
    text, reading = _receipt_for([1.5, value, 2.5], 1)
    doc = _strict(text)
    assert isinstance(doc, dict)
    assert doc["reading"]["value"] == written
    assert "value_type" not in doc["reading"]
    back = receipt_from_json(text)
    assert math.isnan(back.reading.value) if math.isnan(value) else back.reading == reading
    verdict = report_receipt(back, ANCHORS)
    assert verdict.valid, verdict.error
    json.dumps(verdict.as_json(), allow_nan=False)  # `factoryops verify --json` stays JSON


def test_a_text_value_is_a_json_string_marked_text_and_its_receipt_verifies() -> None:
    text, reading = _receipt_for([1.5, "RUNNING", 2.5], 1)
    doc = _strict(text)
    assert isinstance(doc, dict)
    assert doc["reading"]["value"] == "RUNNING"
    assert doc["reading"]["value_type"] == "text"
    back = receipt_from_json(text)
    assert back.reading == reading
    assert report_receipt(back, ANCHORS).valid


def test_a_text_value_that_reads_like_nan_stays_text() -> None:
    """ "NaN" as a status text and NaN as a float are different readings (different leaves)."""
    text, _ = _receipt_for(["NaN", 1.0], 0)
    back = receipt_from_json(text)
    assert back.reading.value == "NaN"
    assert report_receipt(back, ANCHORS).valid


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"value": "nan"}, "reading.value"),  # only the three spellings of JSON's missing floats
        ({"value": "12.5"}, "reading.value"),  # a number written as text, unmarked
        ({"value": 3.0, "value_type": "text"}, "reading.value"),
        ({"value_type": "float"}, "reading.value_type"),
    ],
)
def test_a_value_in_neither_form_is_refused_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    text, _ = _receipt_for([1.5, 2.5], 0)
    doc = json.loads(text)
    doc["reading"].update(change)
    with pytest.raises(MalformedInput) as err:
        receipt_from_json(doc)
    assert err.value.field == field


@settings(max_examples=100, deadline=None)
@given(
    st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
)
def test_any_value_round_trips_through_strict_json(value: float | str) -> None:
    r = Reading(7, 8, "sig", value, "u", 0)
    doc = _strict(json.dumps({"reading": reading_json(r)}, allow_nan=False))
    assert isinstance(doc, dict)
    from attestation.receipt import reading_from_json

    back = reading_from_json(doc["reading"])
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(back.value, float)
        assert math.isnan(back.value)
    else:
        assert back == r
        assert type(back.value) is type(value)
