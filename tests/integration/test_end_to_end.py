"""End to end on loopback with real parts: pymodbus server -> agent -> uvicorn hub -> verify.

The plant is SIMULATED (hil_tests.plant); everything else is the real product code over
real sockets: pymodbus client/server, httpx, uvicorn, SQLite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
from pathlib import Path

import httpx
import pytest

from agent.cli import make_signer
from agent.config import AgentConfig, parse_config
from agent.connectors.registry import build_connectors
from agent.runtime import build_runtime
from agent.uplink import register_device
from attestation import Verdict, load_anchors, receipt_from_json, report_receipt
from attestation.leafbatch import split_leaves
from attestation.reading import decode_leaf, encode_leaf
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
from cloud_sync.storage.leaffile import LeafFile, leaf_file_of
from hil_tests.modbus_server import PlantServer, agent_modbus_section
from tests.hubkit import hub_readings
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


def _config(tmp: Path, hub_url: str, port: int) -> AgentConfig:
    text = "\n".join(
        [
            "[device]",
            'name = "gw-test"',
            "[hub]",
            f'url = "{hub_url}"',
            "timeout_s = 2.0",
            "[window]",
            "max_readings = 64",
            "max_ms = 200",
            agent_modbus_section("127.0.0.1", port, poll_interval_ms=20),
        ]
    )
    return parse_config(text, str(tmp / "agent.toml"), base_dir=tmp)


def _verdict(hub: HubServer, utid: str, seq: int, hub_dir: Path) -> Verdict:
    doc = httpx.get(f"{hub.url}/v1/devices/{utid}/readings/{seq}/receipt").json()
    return report_receipt(receipt_from_json(doc), load_anchors([hub_dir / "fleet-ca.pem"]))


def _spool_rows(cfg: AgentConfig) -> list[tuple[int, str, float]]:
    with sqlite3.connect(cfg.spool.path) as db:
        return db.execute("SELECT seq, signal, value FROM readings ORDER BY seq").fetchall()


def _hub_rows(hub_dir: Path) -> list[tuple[int, str, float]]:
    return sorted((r.seq, r.signal, r.value) for r in hub_readings(hub_dir / "hub.db"))


def _tamper(db_path: Path, seq: int, delta: float) -> None:
    """Change one stored reading's value on the hub, as an attacker with the database and its
    leaves file would: the window's leaves rewritten at the file's end, its row pointed there."""
    store = Store.read_only(db_path)
    try:
        stored = store.all_leaves()
    finally:
        store.close()
    with sqlite3.connect(db_path) as db:
        for utid, window, blob in stored:
            leaves = split_leaves(blob)
            for i, leaf in enumerate(leaves):
                r = decode_leaf(leaf)
                if r.seq == seq:
                    leaves[i] = encode_leaf(dataclasses.replace(r, value=r.value + delta))
                    changed = b"".join(leaves)
                    [offset] = LeafFile(leaf_file_of(db_path)).append([changed])
                    db.execute(
                        "UPDATE windows SET leaves_offset = ?, leaves_length = ?"
                        " WHERE utid = ? AND window = ?",
                        (offset, len(changed), utid, window),
                    )
                    return
    raise AssertionError(f"seq {seq} is not stored")


async def _run_slice(tmp: Path, *, restart_hub: bool) -> tuple[HubServer, str, AgentConfig]:
    hub = HubServer(
        HubSettings.create(tmp / "hub", allow_software_keys=True, open_reads=True)
    ).start()
    async with PlantServer(period_s=0.02) as plant:
        cfg = _config(tmp, hub.url, plant.port)
        signer = make_signer(cfg.device)
        utid = await asyncio.to_thread(
            register_device,
            hub.url,
            hub.settings.admin_token,
            signer,
            name="gw-test",
            state_dir=tmp,
        )
        runtime = build_runtime(cfg, signer, build_connectors(cfg))
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop))
        await until(lambda: runtime.status()["proofs_synced"] >= 3)
        if restart_hub:
            port = hub.port
            await asyncio.to_thread(hub.stop)
            synced_before = runtime.status()["proofs_synced"]
            await until(lambda: runtime.status()["uplink_failures"] >= 2)
            await until(lambda: runtime.status()["windows_signed"] >= synced_before + 3)
            hub = HubServer(hub.settings, port=port).start()  # same port, same database
        await until(lambda: runtime.status()["proofs_synced"] >= 8)
        stop.set()
        await task
    return hub, utid, cfg


@pytest.mark.parametrize("restart_hub", [False, True], ids=["steady", "hub-restart"])
async def test_every_reading_arrives_exactly_once_and_a_random_receipt_verifies(
    tmp_path: Path, restart_hub: bool
) -> None:
    hub, utid, cfg = await _run_slice(tmp_path, restart_hub=restart_hub)
    try:
        spooled, stored = _spool_rows(cfg), _hub_rows(tmp_path / "hub")
        assert len(spooled) > 0
        assert stored == spooled  # same seqs, same values: nothing lost, nothing twice
        assert [r[0] for r in stored] == list(range(len(stored)))  # gap-free from seq 0
        seq = random.Random(7).randrange(len(stored))
        verdict = await asyncio.to_thread(_verdict, hub, utid, seq, tmp_path / "hub")
        assert verdict.valid, verdict.error
        assert verdict.reading is not None
        assert verdict.reading["seq"] == seq
    finally:
        hub.stop()


async def test_a_reading_tampered_on_the_hub_fails_its_receipt(tmp_path: Path) -> None:
    hub, utid, _ = await _run_slice(tmp_path, restart_hub=False)
    try:
        seq = 5
        _tamper(tmp_path / "hub" / "hub.db", seq, 0.5)
        verdict = await asyncio.to_thread(_verdict, hub, utid, seq, tmp_path / "hub")
        assert not verdict.valid
        assert verdict.link in ("reading", "root")
        # a neighbour in the same window also fails: the window's tree changed under it
        neighbour = await asyncio.to_thread(_verdict, hub, utid, seq + 1, tmp_path / "hub")
        assert not neighbour.valid
    finally:
        hub.stop()
