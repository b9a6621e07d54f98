"""The hub's transparency log: receipts carry a COSE log receipt and a signed checkpoint."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from attestation import load_anchors, merkle, receipt_from_json, report_receipt
from attestation.logreceipt import entry_hash
from attestation.signednote import NoteVerifier, open_note, parse_checkpoint
from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.hubkit import Device, body


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, HubSettings, str, Device]]:
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    dev = Device()
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        r = client.post(
            "/v1/devices",
            json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": "gw"},
            headers={"authorization": f"Bearer {s.admin_token}"},
        )
        utid = r.json()["utid"]
        windows = [dev.window(3)[:2] for _ in range(5)]
        assert (
            client.post(
                "/v1/proofs", content=body(*windows), headers={"content-type": "application/cbor"}
            ).status_code
            == 200
        )
        yield client, s, utid, dev


def _anchors(s: HubSettings) -> object:
    return load_anchors([s.data_dir / "fleet-ca.pem", s.data_dir / "hub-log-key.pem"])


def test_a_receipt_with_the_hub_key_pinned_checks_the_log_link(
    hub: tuple[TestClient, HubSettings, str, Device],
) -> None:
    client, s, utid, _ = hub
    rc = receipt_from_json(client.get(f"/v1/devices/{utid}/readings/7/receipt").json())
    assert rc.log_receipt is not None
    verdict = report_receipt(rc, _anchors(s))  # type: ignore[arg-type]
    assert verdict.valid, verdict.error
    assert "log" in verdict.checked
    assert "index 2 of 5" in verdict.notes[0]


def test_a_tampered_log_receipt_or_checkpoint_names_the_link(
    hub: tuple[TestClient, HubSettings, str, Device],
) -> None:
    client, s, utid, _ = hub
    rc = receipt_from_json(client.get(f"/v1/devices/{utid}/readings/4/receipt").json())
    assert rc.log_receipt is not None
    assert rc.checkpoint is not None
    flipped = bytearray(rc.log_receipt)
    flipped[-5] ^= 1  # inside the signature
    bad = report_receipt(dataclasses.replace(rc, log_receipt=bytes(flipped)), _anchors(s))  # type: ignore[arg-type]
    assert bad.link == "log"
    forged = rc.checkpoint.replace("\n5\n", "\n6\n", 1)
    bad = report_receipt(dataclasses.replace(rc, checkpoint=forged), _anchors(s))  # type: ignore[arg-type]
    assert bad.link == "checkpoint"


def test_checkpoints_are_consistent_and_signed(
    hub: tuple[TestClient, HubSettings, str, Device],
) -> None:
    client, _s, _, dev = hub
    key = client.get("/v1/log/key").json()
    verifier = NoteVerifier.from_vkey(key["vkey"])
    cp5 = parse_checkpoint(open_note(client.get("/v1/log/checkpoint").text, [verifier]))
    assert cp5.size == 5
    more = [dev.window(2)[:2] for _ in range(3)]
    client.post("/v1/proofs", content=body(*more), headers={"content-type": "application/cbor"})
    cp8 = parse_checkpoint(open_note(client.get("/v1/log/checkpoint").text, [verifier]))
    assert cp8.size == 8
    proof = client.get("/v1/log/proof/consistency", params={"from": 5, "to": 8}).json()["proof"]
    merkle.verify_consistency(5, 8, cp5.root, cp8.root, [base64.b64decode(p) for p in proof])
    inc = client.get("/v1/log/proof/inclusion", params={"index": 6, "size": 8}).json()["path"]
    assert len(inc) == merkle.inclusion_path_length(6, 8)
    assert client.get("/v1/log/proof/consistency", params={"from": 9, "to": 3}).status_code == 422
    assert entry_hash(b"x") != entry_hash(b"y")
