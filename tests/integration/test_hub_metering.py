"""Metering: usage per site and day from accepted proofs, a signed monthly statement that
verifies offline with the hub's log key (and fails when edited), and the billing event
delivered to a real HTTP receiver on loopback with retries and an HMAC signature.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attestation.errors import BrokenLink
from cloud_sync.app import hub_app
from cloud_sync.metering import verify_statement
from cloud_sync.routes import HubDeps
from cloud_sync.settings import HubSettings
from tests.hubkit import Device, body
from tests.waiting import until_sync


def _ns(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1e9)


class Receiver(BaseHTTPRequestHandler):
    """Answers 500 to the first ``fail`` deliveries, then 204; keeps what it got."""

    fail = 2
    got: list[tuple[dict[str, str], bytes]] = []  # noqa: RUF012 - test state on the class

    def do_POST(self) -> None:  # the http.server API names it so
        data = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        Receiver.got.append((headers, data))
        self.send_response(500 if len(Receiver.got) <= Receiver.fail else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/billing"
    server.shutdown()
    server.server_close()


def test_usage_statement_and_billing_webhook(tmp_path: Path, receiver: str) -> None:
    now = [_ns("2026-10-15T10:00:00+00:00")]
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, webhook_url=receiver)
    deps = HubDeps.open(s, clock=lambda: now[0])
    webhooks = deps.webhooks
    webhooks.base_s = 0.01  # retry fast in the test
    log_key = deps.log.signer.public_key()
    app = hub_app(deps)
    client = TestClient(app)
    admin = {"authorization": f"Bearer {s.admin_token}"}
    dev = Device()
    client.post(
        "/v1/devices",
        json={
            "public_key_pem": dev.public_pem(),
            "key_kind": "software",
            "name": "p",
            "site": "plant-1",
        },
        headers=admin,
    )
    cbor = {"content-type": "application/cbor"}
    client.post("/v1/proofs", content=body(*[dev.window(10)[:2] for _ in range(3)]), headers=cbor)
    now[0] = _ns("2026-10-16T09:00:00+00:00")
    client.post("/v1/proofs", content=body(*[dev.window(10)[:2] for _ in range(2)]), headers=cbor)

    usage = client.get("/v1/sites/plant-1/usage", params={"month": "2026-10"}, headers=admin).json()
    assert usage["days"] == [
        {"date": "2026-10-15", "proofs": 3, "readings": 30},
        {"date": "2026-10-16", "proofs": 2, "readings": 20},
    ]
    assert (usage["proofs"], usage["readings"]) == (5, 50)
    early = client.post("/v1/sites/plant-1/usage/2026-10/close", headers=admin)
    assert early.status_code == 409 and early.json()["error"] == "month_open"
    assert (
        client.get("/v1/sites/plant-1/usage", params={"month": "Oct"}, headers=admin).status_code
        == 422
    )

    now[0] = _ns("2026-11-02T00:00:00+00:00")
    closed = client.post("/v1/sites/plant-1/usage/2026-10/close", headers=admin).json()
    again = client.post("/v1/sites/plant-1/usage/2026-10/close", headers=admin).json()
    assert closed["created"] and not again["created"] and again["statement"] == closed["statement"]
    note = client.get("/v1/sites/plant-1/usage/2026-10/statement", headers=admin).json()[
        "statement"
    ]
    fields = verify_statement(note, log_key, s.log_origin)
    assert fields["site"] == "plant-1" and fields["proofs"] == "5" and fields["readings"] == "50"
    assert fields["log"].split()[1] == "5"  # rests on the log checkpoint of 5 entries
    with pytest.raises(BrokenLink):
        verify_statement(note.replace("readings 50", "readings 5"), log_key, s.log_origin)

    until_sync(
        lambda: any(d["status"] == "delivered" for d in webhooks.deliveries()),
        30,
        "the billing webhook delivered",
    )
    (delivery,) = webhooks.deliveries()  # one billing event: the month was closed once
    assert delivery["attempts"] == 3  # two 500s, then accepted
    headers, data = Receiver.got[-1]
    want = "sha256=" + hmac.new(s.webhook_secret.encode(), data, hashlib.sha256).hexdigest()
    assert headers["x-factoryops-signature"] == want
    event = json.loads(data)
    assert event["event"] == "usage.statement" and event["statement"] == note
    webhooks.stop()
