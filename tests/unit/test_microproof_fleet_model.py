"""The model map (payload key 10) carries the fleet model's version (4) and the producing
job (5) when the model came from the hub; proofs of other models keep their exact bytes."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation.errors import MalformedInput
from attestation.microproof import MicroProof, ModelRef, decode_payload, encode_payload


def _proof(model: ModelRef) -> MicroProof:
    return MicroProof(3, 10, 19, 1, 2, 10, bytes(32), bytes(32), model=model)


def test_a_model_without_fleet_fields_encodes_as_before() -> None:
    payload = cbor2.loads(encode_payload(_proof(ModelRef("pump", bytes(32), "1"))))
    assert payload[10] == {1: "pump", 2: bytes(32), 3: "1"}


@given(version=st.integers(0, 2**63 - 1), job=st.none() | st.integers(0, 2**63 - 1))
def test_fleet_version_and_job_round_trip(version: int, job: int | None) -> None:
    model = ModelRef("merged", bytes(range(32)), "2", version, job)
    data = encode_payload(_proof(model))
    assert data == cbor2.dumps(cbor2.loads(data), canonical=True)  # still deterministic
    assert decode_payload(data).model == model


def test_unknown_model_keys_are_ignored_and_a_negative_version_refused() -> None:
    payload = cbor2.loads(encode_payload(_proof(ModelRef("m", bytes(32), "1", 4, 9))))
    payload[10][6] = "from a later version"
    assert decode_payload(cbor2.dumps(payload, canonical=True)).model == ModelRef(
        "m", bytes(32), "1", 4, 9
    )
    payload[10][4] = -1
    with pytest.raises(MalformedInput, match=r"payload\[10\]\[4\]"):
        decode_payload(cbor2.dumps(payload, canonical=True))
