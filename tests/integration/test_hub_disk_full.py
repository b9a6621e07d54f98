"""A hub whose disk fills refuses the upload it cannot store, keeps everything it
acknowledged, and stores the same upload once space returns.

The hub's data directory lives on a real 16 MiB tmpfs that a ballast file fills
(``tests/smalldisk.py``: a true ENOSPC from the kernel); the hub is the real app on SQLite
with its leaves file beside the database (ADR 0053), driven in process.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from cloud_sync.storage.leaffile import ALIGN, DIRECT_FROM
from tests.hubkit import Device, body, receipts_verify, register_software
from tests.smalldisk import fill, small_disk_at

CBOR = {"content-type": "application/cbor"}
READINGS = 1000  # a window: ~28 KB of leaves, more than the 8 KiB left


@pytest.mark.parametrize(
    "pending_windows",
    [1, 3],
    ids=["one window, through the page cache", "three windows, written direct"],
)
def test_a_full_disk_refuses_the_upload_keeps_the_acknowledged_and_recovers(
    tmp_path: Path, pending_windows: int
) -> None:
    """One window's ~28 KB of leaves are appended through the page cache; three (~84 KB, at
    least ``DIRECT_FROM``) with O_DIRECT from a 4 KiB boundary (ADR 0053): either way the
    kernel's ENOSPC refuses the upload and nothing of it is stored."""
    with small_disk_at(tmp_path / "disk", "16m") as disk:
        s = HubSettings.create(disk / "hub", allow_software_keys=True, open_reads=True)
        with TestClient(create_app(s), raise_server_exceptions=False) as client:
            dev = Device()
            utid = register_software(client, s, dev)
            acknowledged = body(dev.window(READINGS)[:2], dev.window(READINGS)[:2])
            assert client.post("/v1/proofs", content=acknowledged, headers=CBOR).status_code == 200

            ballast = fill(disk, leave_bytes=8 * 1024)
            windows = [dev.window(READINGS)[:2] for _ in range(pending_windows)]
            size = sum(len(b"".join(leaves)) for _, leaves in windows)
            assert (size >= DIRECT_FROM) == (pending_windows == 3)
            pending = body(*windows)
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
            assert [r["status"] for r in again.json()["results"]] == ["accepted"] * len(windows)
            later = body(dev.window(READINGS)[:2])
            assert client.post("/v1/proofs", content=later, headers=CBOR).status_code == 200
            total = (3 + pending_windows) * READINGS
            assert receipts_verify(client, s, utid, range(0, total, 100))
            assert receipts_verify(client, s, utid, range(total - 1, total))
        with sqlite3.connect(s.data_dir / "hub.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            (first,) = db.execute("SELECT leaves_offset FROM windows WHERE window = 2").fetchone()
        if pending_windows == 3:  # the direct write began on a 4 KiB boundary
            assert first % ALIGN == 0
