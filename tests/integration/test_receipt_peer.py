"""A hub's receipts checked by a second verifier written in another language.

``tests/peers/receipt_verifier.mjs`` reads ARCHITECTURE.md's proof and receipt formats
again, in JavaScript on node's own crypto (OpenSSL) with its own deterministic CBOR: the
canonical form, the ES256 signature and low s, the reading's place in the window, the leaf
re-encoded from the receipt's JSON, the RFC 9162 path to the signed root, the hub's COSE
receipt and its C2SP checkpoint. Every receipt a real hub serves must pass it as it passes
``factoryops verify``, and every tampered one must fail both at the same link. It was
written after a proof's payload was found to carry cbor2's float32 for values such as
40000.0 where RFC 8949 writes a half (ADR 0013, amended): a strict verifier refused those.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attestation import receipt_from_json, report_receipt
from attestation.microproof import AnomalySummary, DriftTest
from attestation.verify import load_anchors
from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.cborvariants import altered_copies, widened
from tests.conftest import missing
from tests.hubkit import Device, body, register_software

PEERS = Path(__file__).resolve().parents[1] / "peers"
PEER = PEERS / "receipt_verifier.mjs"
CBOR = {"content-type": "application/cbor"}
VALUES: tuple[float | str, ...] = (
    21.5,
    40000.0,  # a half that cbor2's C encoder widened in the payload's statistics
    -65504.0,
    -0.0,
    float("nan"),
    float("inf"),
    1e-7,
    0.1,
    'a "quoted" text value, ünïcödé',
    123456789.0,
)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        missing("node (Debian package nodejs) runs the receipt verifier written in JavaScript")
    assert node is not None
    return node


class Verifiers:
    """Both verifiers on one receipt: ``factoryops verify``'s code and the JavaScript peer."""

    def __init__(self, tmp: Path, device_pem: Path, hub_pem: Path) -> None:
        self.tmp, self.device_pem, self.hub_pem = tmp, device_pem, hub_pem
        self.node = _node()
        self.anchors = load_anchors([device_pem, hub_pem])

    def both(self, doc: dict[str, Any], *, device_pem: Path | None = None) -> tuple[Any, Any]:
        path = self.tmp / "receipt.json"
        path.write_text(json.dumps(doc))
        pin = device_pem or self.device_pem
        run = subprocess.run(
            [self.node, str(PEER), str(path), str(pin), str(self.hub_pem)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        anchors = self.anchors if device_pem is None else load_anchors([pin, self.hub_pem])
        return json.loads(run.stdout), report_receipt(receipt_from_json(doc), anchors)


def _hub(tmp_path: Path) -> tuple[TestClient, HubSettings]:
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    return TestClient(create_app(s), raise_server_exceptions=False), s


def _hub_key(tmp_path: Path, client: TestClient) -> Path:
    pem = tmp_path / "hub-log-key.pem"
    pem.write_text(client.get("/v1/log/key").json()["pem"])
    return pem


@pytest.fixture
def hub(tmp_path: Path) -> tuple[TestClient, HubSettings, Device, str]:
    client, s = _hub(tmp_path)
    dev = Device()
    utid = register_software(client, s, dev)
    windows = [
        dev.window(
            len(VALUES),
            values=VALUES,
            anomaly=AnomalySummary(2, 40000.0, 32768.0),
            drift=DriftTest("ks", 60000.0, 0.25, True),
        )[:2],
        dev.window(3)[:2],
    ]
    r = client.post("/v1/proofs", content=body(*windows), headers=CBOR)
    assert r.status_code == 200, r.text
    return client, s, dev, utid


@pytest.fixture
def verifiers(tmp_path: Path, hub: tuple[TestClient, HubSettings, Device, str]) -> Verifiers:
    client, _, dev, _ = hub
    device_pem = tmp_path / "device.pem"
    device_pem.write_text(dev.public_pem())
    return Verifiers(tmp_path, device_pem, _hub_key(tmp_path, client))


def _receipt(hub: tuple[TestClient, HubSettings, Device, str], seq: int) -> dict[str, Any]:
    client, _, _, utid = hub
    r = client.get(f"/v1/devices/{utid}/readings/{seq}/receipt")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_every_receipt_a_hub_serves_verifies_in_the_javascript_peer(
    hub: tuple[TestClient, HubSettings, Device, str], verifiers: Verifiers
) -> None:
    for seq in range(len(VALUES) + 3):
        doc = _receipt(hub, seq)
        assert "log_receipt" in doc and "checkpoint" in doc
        peer, ours = verifiers.both(doc)
        assert ours.valid, (seq, ours.error)
        assert peer == {
            "valid": True,
            "checked": ["signature", "reading", "inclusion", "root", "log", "checkpoint"],
        }, (seq, peer)


def _tampered(doc: dict[str, Any], dev: Device) -> dict[str, dict[str, Any]]:
    """Copies of a receipt changed where an attacker (or a damaged store) would change it."""
    path = list(doc["path"])
    first = bytearray(base64.b64decode(path[0]))
    first[0] ^= 1
    b64 = base64.b64encode
    cose = base64.b64decode(doc["microproof"])
    out = {
        "value": {**doc, "reading": {**doc["reading"], "value": 21.25}},
        "seq": {**doc, "reading": {**doc["reading"], "seq": doc["reading"]["seq"] + 1}},
        "path_hash": {**doc, "path": [b64(bytes(first)).decode(), *path[1:]]},
        "path_short": {**doc, "path": path[:-1]},
        "widened_payload": {**doc, "microproof": b64(widened(cose, dev.signer.sign)).decode()},
    }
    for name, altered in altered_copies(cose).items():
        out[name] = {**doc, "microproof": b64(altered).decode()}
    return out


def test_a_tampered_receipt_fails_both_verifiers_at_the_same_link(
    hub: tuple[TestClient, HubSettings, Device, str], verifiers: Verifiers
) -> None:
    _, _, dev, _ = hub
    doc = _receipt(hub, 0)  # 21.5, in the window whose statistics hold 40000.0
    links = {}
    for name, bad in _tampered(doc, dev).items():
        peer, ours = verifiers.both(bad)
        assert not ours.valid and not peer["valid"], (name, peer, ours)
        assert peer["link"] == ours.link, (name, peer, ours.link, ours.error)
        links[name] = ours.link
    assert links["widened_payload"] == links["twin_signature"] == "noncanonical"
    assert links["path_hash"] == links["value"] == "root" and links["path_short"] == "inclusion"


def test_another_device_key_fails_both_verifiers(
    hub: tuple[TestClient, HubSettings, Device, str], verifiers: Verifiers, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    other.write_text(Device().public_pem())
    peer, ours = verifiers.both(_receipt(hub, 1), device_pem=other)
    assert not ours.valid and (peer["valid"], peer["link"]) == (False, "key"), (peer, ours)


def test_a_gateway_written_in_javascript_is_accepted_and_its_receipts_verify(
    tmp_path: Path,
) -> None:
    """The other direction: ``tests/peers/proof_signer.mjs`` seals windows from the same
    documents (its own leaves, tree, statistics, deterministic CBOR and low-s ES256), and
    the hub takes them as the canonical proofs they are; both verifiers pass every receipt."""
    out = tmp_path / "js-gateway"
    subprocess.run(
        [_node(), str(PEERS / "proof_signer.mjs"), str(out), "3", "7"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    client, s = _hub(tmp_path)
    r = client.post(
        "/v1/devices",
        json={
            "public_key_pem": (out / "device.pem").read_text(),
            "key_kind": "software",
            "name": "js-gateway",
        },
        headers={"authorization": f"Bearer {s.admin_token}"},
    )
    assert r.status_code == 201, r.text
    utid = r.json()["utid"]
    for i in range(3):
        r = client.post("/v1/proofs", content=(out / f"upload-{i}.cbor").read_bytes(), headers=CBOR)
        assert r.status_code == 200, r.text
        assert [x["status"] for x in r.json()["results"]] == ["accepted"]
    verifiers = Verifiers(tmp_path, out / "device.pem", _hub_key(tmp_path, client))
    for seq in range(21):
        r = client.get(f"/v1/devices/{utid}/readings/{seq}/receipt")
        assert r.status_code == 200, r.text
        peer, ours = verifiers.both(r.json())
        assert ours.valid and peer["valid"], (seq, peer, ours.error)
