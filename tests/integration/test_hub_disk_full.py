"""A hub whose disk fills refuses the upload it cannot store, keeps everything it
acknowledged, and stores the same upload once space returns.

The hub's data directory lives on a real 16 MiB tmpfs that a ballast file fills
(``tests/smalldisk.py``: a true ENOSPC from the kernel); the hub is the real app on SQLite
with its leaves file beside the database (ADR 0053), driven in process.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fastapi.testclient import TestClient

from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.hubkit import Device, body, receipts_verify, register_software
from tests.smalldisk import fill, small_disk_at

CBOR = {"content-type": "application/cbor"}
READINGS = 1000  # a window: ~28 KB of leaves, more than the 8 KiB left


def test_a_full_disk_refuses_the_upload_keeps_the_acknowledged_and_recovers(
    tmp_path: Path,
) -> None:
    with small_disk_at(tmp_path / "disk", "16m") as disk:
        s = HubSettings.create(disk / "hub", allow_software_keys=True, open_reads=True)
        with TestClient(create_app(s), raise_server_exceptions=False) as client:
            dev = Device()
            utid = register_software(client, s, dev)
            acknowledged = body(dev.window(READINGS)[:2], dev.window(READINGS)[:2])
            assert client.post("/v1/proofs", content=acknowledged, headers=CBOR).status_code == 200

            ballast = fill(disk, leave_bytes=8 * 1024)
            pending = body(dev.window(READINGS)[:2])
            refused = client.post("/v1/proofs", content=pending, headers=CBOR)
            assert refused.status_code == 503, refused.text  # not acknowledged: sent again
            assert refused.json()["error"] == "storage_full"
            assert refused.json()["request_id"]
            assert client.get(f"/v1/devices/{utid}").json()["last_seq"] == 2 * READINGS - 1
            every_hundredth = range(0, 2 * READINGS, 100)
            assert receipts_verify(client, s, utid, every_hundredth)

            ballast.unlink()  # space returns
            again = client.post("/v1/proofs", content=pending, headers=CBOR)
            assert again.status_code == 200, again.text
            assert [r["status"] for r in again.json()["results"]] == ["accepted"]
            later = body(dev.window(READINGS)[:2])
            assert client.post("/v1/proofs", content=later, headers=CBOR).status_code == 200
            assert receipts_verify(client, s, utid, range(0, 4 * READINGS, 100))
            assert receipts_verify(client, s, utid, range(4 * READINGS - 1, 4 * READINGS))
        with sqlite3.connect(s.data_dir / "hub.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
