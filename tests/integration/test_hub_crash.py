"""kill -9 of the hub in the middle of uploads: nothing it acknowledged is lost, nothing is
stored twice, and the transparency log's tree is intact and consistent after every restart.

The hub is its own process (`factoryops hub serve`, SQLite); the uploader sends pre-signed
windows the way the agent does (same bytes again after a failure, rewind on out_of_order).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cbor2
import httpx
import pytest

from agent.sealer import SealedWindow, seal
from agent.window import ClosedWindow
from attestation.localports import free_port
from attestation.merkle import verify_consistency
from attestation.microproof import GENESIS_PREV, chain_hash
from attestation.reading import Reading
from attestation.signednote import NoteVerifier, open_note, parse_checkpoint
from attestation.signers.software import SoftwareSigner
from tests.hubkit import Device, hub_readings
from tests.waiting import until_sync

pytestmark = pytest.mark.timeout(240)
KILLS = int(os.environ.get("FACTORYOPS_HUB_KILLS", "6"))


def _serve(data: Path, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "factoryops", "hub", "serve", "--data-dir", str(data)]
    argv += ["--port", str(port), "--allow-software-keys", "--open-reads"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    until_sync(lambda: _healthy(port), 60, "the hub answering /healthz")
    return proc


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _chain(signer: SoftwareSigner, n: int) -> list[SealedWindow]:
    prev, out = GENESIS_PREV, []
    for w in range(n):
        rs = tuple(
            Reading(w * 200 + i, 1_700_000_000_000_000_000 + w * 10**9 + i, "p", float(i), "bar")
            for i in range(200)
        )
        sealed = seal(ClosedWindow(rs), index=w, prev=prev, signer=signer, iat=1)
        prev = chain_hash(sealed.cose)
        out.append(sealed)
    return out


def _upload(url: str, chain: list[SealedWindow], acked: set[int], checkpoints: list[str]) -> None:
    """Upload ``chain`` four proofs a POST through the hub's kills, sending the same bytes
    again while it is down; every window it acknowledges goes into ``acked``, every
    checkpoint seen into ``checkpoints``."""
    nxt = 0
    with httpx.Client(timeout=5) as client:
        while nxt < len(chain):
            batch = chain[nxt : nxt + 4]
            content = cbor2.dumps(
                {"proofs": [{"cose": w.cose, "leaves": b"".join(w.leaves)} for w in batch]}
            )
            try:
                resp = client.post(
                    f"{url}/v1/proofs",
                    content=content,
                    headers={"content-type": "application/cbor"},
                )
                doc = resp.json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.05)  # a retry's pause, not a wait for a condition
                continue  # the hub is down: the same bytes again later
            for res in doc.get("results", []):
                if res.get("status") in ("accepted", "duplicate"):
                    acked.add(int(res["window"]))
            if resp.status_code == 200:
                nxt += len(batch)
                with contextlib.suppress(httpx.HTTPError):
                    checkpoints.append(client.get(f"{url}/v1/log/checkpoint").text)
            elif doc.get("error") == "out_of_order":
                nxt = int(doc["expected_window"])
            else:
                raise AssertionError(f"refused: {doc}")


def _check_log(url: str, checkpoints: list[str], size: int) -> None:
    """The final checkpoint has ``size`` entries and is consistent with every one seen."""
    key = httpx.get(f"{url}/v1/log/key").json()
    verifier = NoteVerifier.from_vkey(key["vkey"])
    final = parse_checkpoint(open_note(httpx.get(f"{url}/v1/log/checkpoint").text, [verifier]))
    assert final.size == size
    for note in checkpoints:
        old = parse_checkpoint(open_note(note, [verifier]))
        if 0 < old.size < final.size:
            proof = httpx.get(
                f"{url}/v1/log/proof/consistency", params={"from": old.size, "to": final.size}
            ).json()
            verify_consistency(
                old.size,
                final.size,
                old.root,
                final.root,
                [base64.b64decode(h) for h in proof["proof"]],
            )


def test_kill_9_of_the_hub_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    data, port = tmp_path / "hub", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(data, port)
    signer = SoftwareSigner.generate()
    dev = Device(signer)
    r = httpx.post(
        f"{url}/v1/devices",
        json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": "gw"},
        headers={"authorization": "Bearer " + (data / "admin-token").read_text().strip()},
    )
    r.raise_for_status()
    chain = _chain(signer, 60)
    acked: set[int] = set()
    checkpoints: list[str] = []
    done = threading.Event()

    def upload() -> None:
        _upload(url, chain, acked, checkpoints)
        done.set()

    uploader = threading.Thread(target=upload)
    uploader.start()
    rng = random.Random(11)
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)  # mid-upload, mid-transaction perhaps
        proc.wait()
        proc = _serve(data, port)
    uploader.join(120)
    try:
        assert done.is_set()
        with sqlite3.connect(data / "hub.db") as db:
            stored = dict(db.execute("SELECT window, cose FROM windows").fetchall())
            (n_log,) = db.execute("SELECT COUNT(*) FROM log_entries").fetchone()
        n_readings = len(hub_readings(data / "hub.db"))
        assert acked <= set(stored)  # everything acknowledged survived every kill
        assert stored == {w.index: w.cose for w in chain}  # all of it, byte for byte, once
        assert n_readings == 60 * 200 and n_log == 60
        _check_log(url, checkpoints, 60)  # consistent with every checkpoint seen in the kills
    finally:
        proc.terminate()
        proc.wait()


def _hub_at_0012(path: Path, windows_n: int) -> None:
    """A SQLite hub database at revision 0012 holding ``windows_n`` windows of 4 KB."""
    from alembic import command
    from sqlalchemy import create_engine

    from benchmarks.fleetload import device_values, window_values
    from cloud_sync.storage.migrate import alembic_config
    from cloud_sync.storage.tables import devices, windows

    engine = create_engine(f"sqlite:///{path}")
    utid = "utid:" + "ab" * 32
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0012")
        conn.execute(devices.insert().values(device_values(utid, "gw", head_window=windows_n - 1)))
        filler = os.urandom(4088)  # 4 KB a proof, each its own (its hash a unique key at 0012)
        conn.execute(
            windows.insert(),
            [
                window_values(
                    utid, w, filler + w.to_bytes(8, "big"), w.to_bytes(32, "big"), count=1
                )
                for w in range(windows_n)
            ],
        )
    engine.dispose()


def test_a_hub_killed_while_it_migrates_starts_again_with_every_window(tmp_path: Path) -> None:
    """kill -9 while revision 0013 rebuilds ``windows`` (its copy under way: the WAL
    growing). pysqlite ran the rebuild's CREATE TABLE outside the transaction, so the kill
    left ``_alembic_tmp_windows`` behind and every later start failed ("table already
    exists"); now the whole upgrade rolls back and the next start migrates."""
    from cloud_sync.storage import Store

    db = tmp_path / "hub.db"
    n = 30_000
    _hub_at_0012(db, n)
    wal = Path(f"{db}-wal")
    start_size = wal.stat().st_size if wal.exists() else 0
    migrating = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from cloud_sync.storage import Store; Store.open('sqlite:///{db}')",
        ]
    )
    until_sync(
        lambda: (
            migrating.poll() is not None
            or (wal.exists() and wal.stat().st_size > start_size + (8 << 20))
        ),
        60,
        "the rebuild's copy writing the WAL",
        every_s=0.005,
    )
    assert migrating.poll() is None, "the migration ended before it could be killed"
    migrating.send_signal(signal.SIGKILL)
    migrating.wait()
    store = Store.open(f"sqlite:///{db}")  # the next start
    try:
        assert store.counts()["windows"] == n
        with sqlite3.connect(db) as conn:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
            (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert not {t for t in tables if t.startswith("_alembic_tmp")}
        assert version >= "0013"
    finally:
        store.close()
