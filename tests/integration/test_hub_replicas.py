"""Two hub processes' worth of servers on one PostgreSQL accept proofs concurrently.

Each replica is a separate uvicorn server with its own engine and connection pool (threads
here, not processes: the database sees two independent writers either way).
"""

from __future__ import annotations

import base64
import random
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from attestation import merkle
from attestation.signednote import NoteVerifier, open_note, parse_checkpoint
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from tests.hubkit import Device, body

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]


def test_two_replicas_build_one_consistent_log(tmp_path: Path, postgres_url: str) -> None:
    engine = create_engine(postgres_url)  # a fresh database
    settings = HubSettings.create(tmp_path / "hub", db_url=postgres_url, allow_software_keys=True)
    a, b = HubServer(settings).start(), HubServer(settings).start()
    try:
        devices = [Device() for _ in range(4)]
        for d in devices:
            r = httpx.post(
                f"{a.url}/v1/devices",
                headers={"authorization": f"Bearer {settings.admin_token}"},
                json={"public_key_pem": d.public_pem(), "key_kind": "software", "name": "gw"},
            )
            assert r.status_code == 201
        errors: list[str] = []

        def upload(dev: Device, seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(10):
                hub = rng.choice([a, b])
                r = httpx.post(
                    f"{hub.url}/v1/proofs",
                    content=body(dev.window(5)[:2]),
                    headers={"content-type": "application/cbor"},
                    timeout=30,
                )
                if r.status_code != 200:
                    errors.append(r.text)

        threads = [threading.Thread(target=upload, args=(d, i)) for i, d in enumerate(devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with engine.connect() as conn:
            idx = [r[0] for r in conn.execute(text("SELECT idx FROM log_entries ORDER BY idx"))]
            pairs = conn.execute(text('SELECT COUNT(DISTINCT (utid, "window")) FROM log_entries'))
            assert idx == list(range(40))  # one tree: no index twice, none skipped
            assert pairs.scalar() == 40
        verifier = NoteVerifier.from_vkey(httpx.get(f"{a.url}/v1/log/key").json()["vkey"])
        cp_a = parse_checkpoint(open_note(httpx.get(f"{a.url}/v1/log/checkpoint").text, [verifier]))
        cp_b = parse_checkpoint(open_note(httpx.get(f"{b.url}/v1/log/checkpoint").text, [verifier]))
        assert cp_a == cp_b
        proof = httpx.get(
            f"{b.url}/v1/log/proof/consistency", params={"from": 17, "to": 40}
        ).json()["proof"]
        with engine.connect() as conn:
            hashes = [
                r[0] for r in conn.execute(text("SELECT entry_hash FROM log_entries ORDER BY idx"))
            ]
        merkle.verify_consistency(
            17, 40, merkle.root(hashes[:17]), cp_a.root, [base64.b64decode(p) for p in proof]
        )
    finally:
        a.stop()
        b.stop()
        engine.dispose()
