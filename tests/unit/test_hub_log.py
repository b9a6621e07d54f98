"""The hub's transparency log: receipts carry a COSE log receipt and a signed checkpoint."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from attestation import load_anchors, merkle, receipt_from_json, report_receipt
from attestation.errors import MalformedInput
from attestation.logreceipt import entry_hash
from attestation.signednote import NoteVerifier, open_note, parse_checkpoint
from attestation.verify import TrustAnchors
from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
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


def _anchors(s: HubSettings) -> TrustAnchors:
    return load_anchors([s.data_dir / "fleet-ca.pem", s.data_dir / "hub-log-key.pem"])


def test_a_receipt_with_the_hub_key_pinned_checks_the_log_link(
    hub: tuple[TestClient, HubSettings, str, Device],
) -> None:
    client, s, utid, _ = hub
    rc = receipt_from_json(client.get(f"/v1/devices/{utid}/readings/7/receipt").json())
    assert rc.log_receipt is not None
    verdict = report_receipt(rc, _anchors(s))
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
    bad = report_receipt(dataclasses.replace(rc, log_receipt=bytes(flipped)), _anchors(s))
    assert bad.link == "log"
    forged = rc.checkpoint.replace("\n5\n", "\n6\n", 1)
    bad = report_receipt(dataclasses.replace(rc, checkpoint=forged), _anchors(s))
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


def test_a_log_written_before_the_subtree_index_is_indexed_on_open(tmp_path: Path) -> None:
    from sqlalchemy import delete, select

    from cloud_sync.log import HubLog
    from cloud_sync.storage.tables import log_nodes

    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    client = TestClient(create_app(s))
    dev = Device()
    client.post(
        "/v1/devices",
        json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": "gw"},
        headers={"authorization": f"Bearer {s.admin_token}"},
    )
    client.post(
        "/v1/proofs",
        content=body(*[dev.window(3)[:2] for _ in range(11)]),
        headers={"content-type": "application/cbor"},
    )
    store = Store.open(s.db_url)
    before = HubLog.open(store, s.data_dir, s.log_origin).consistency(3, 11)
    with store.engine.begin() as conn:
        # the 11 entries came in one request, their nodes built as it was appended
        batch_nodes = sorted(conn.execute(select(log_nodes)).all())
        conn.execute(delete(log_nodes))  # as an older hub left it
    log = HubLog.open(store, s.data_dir, s.log_origin)  # rebuilds them from the entries
    with store.engine.connect() as conn:
        assert sorted(conn.execute(select(log_nodes)).all()) == batch_nodes
    assert len(batch_nodes) == 11 - 3  # perfect subtrees of 11 leaves: 5 + 2 + 1
    assert log.consistency(3, 11) == before
    hashes = [entry_hash(c) for c in _stored_cose(store)]
    assert log.inclusion(7, 11) == merkle.inclusion_path(hashes, 7)
    store.close()


def _stored_cose(store: Store) -> list[bytes]:
    from sqlalchemy import select

    from cloud_sync.storage.tables import windows

    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(windows.c.cose).order_by(windows.c.window))]


_NOTE_KEY = NoteVerifier.for_key("hub.example/log", Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize(
    ("parse", "note", "field"),
    [  # the first one was found by fuzz/targets.py: base64 raised ValueError on non-ASCII
        (parse_checkpoint, "hub.example/log\n4\n\u00e9AAAA\n", "checkpoint root hash"),
        (parse_checkpoint, "hub.example/log\n\u00b2\nAAAA\n", "checkpoint"),  # Unicode digit
        (
            lambda note: open_note(note, [_NOTE_KEY]),
            "o\n1\nAA==\n\n\u2014 hub.example/log \u00e9\n",
            "note signature line 1",
        ),
    ],
)
def test_non_ascii_in_a_checkpoint_is_malformed_input_naming_the_field(
    parse: Callable[[str], object], note: str, field: str
) -> None:
    with pytest.raises(MalformedInput) as err:
        parse(note)
    assert err.value.field == field
