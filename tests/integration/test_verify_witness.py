"""`factoryops verify --remember`: an auditor follows a real hub's log and catches a fork.

The fork is made the way it happens: the hub's database is restored from an old backup and
the hub then accepts other proofs, so it signs a second, different tree of the same size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from factoryops.cli import cli
from tests.hubkit import Device, register, upload


def _receipt(hub: HubServer, utid: str, seq: int, out: Path) -> Path:
    r = httpx.get(f"{hub.url}/v1/devices/{utid}/readings/{seq}/receipt")
    r.raise_for_status()
    out.write_text(json.dumps(r.json()))
    return out


def _verify(receipt: Path, hub_dir: Path, memory: Path, *extra: str) -> Result:
    args = ["verify", str(receipt), "--trust", str(hub_dir / "fleet-ca.pem")]
    args += ["--trust", str(hub_dir / "hub-log-key.pem"), "--remember", str(memory), *extra]
    return CliRunner().invoke(cli, args)


def test_an_auditor_follows_the_log_and_catches_a_fork(tmp_path: Path) -> None:
    hub_dir, memory = tmp_path / "hub", tmp_path / "auditor" / "checkpoints.json"
    hub = HubServer(HubSettings.create(hub_dir, allow_software_keys=True, open_reads=True)).start()
    try:
        dev = Device()
        utid = register(hub.url, hub.settings.admin_token, dev, "press-1")
        upload(hub.url, *[dev.window(4)[:2] for _ in range(3)])
        first = _verify(_receipt(hub, utid, 1, tmp_path / "r1.json"), hub_dir, memory)
        assert first.exit_code == 0, first.output
        assert "remembered tree 3" in first.output

        hub.stop()
        shutil.copy(hub_dir / "hub.db", tmp_path / "backup.db")
        hub = HubServer(hub.settings, port=hub.port).start()
        upload(hub.url, *[dev.window(4)[:2] for _ in range(2)])
        newer = _receipt(hub, utid, 13, tmp_path / "r2.json")
        offline = _verify(newer, hub_dir, memory)
        assert offline.exit_code == 0 and "not checked against remembered 3" in offline.output
        online = _verify(newer, hub_dir, memory, "--hub", hub.url)
        assert online.exit_code == 0 and "tree 3 -> 5 consistent" in online.output

        # the hub is restored from the backup (tree 3) and accepts other devices' proofs
        hub.stop()
        shutil.copy(tmp_path / "backup.db", hub_dir / "hub.db")
        for suffix in ("-wal", "-shm"):
            (hub_dir / f"hub.db{suffix}").unlink(missing_ok=True)
        hub = HubServer(hub.settings, port=hub.port).start()
        other = Device()
        other_utid = register(hub.url, hub.settings.admin_token, other, "press-2")
        upload(hub.url, *[other.window(4)[:2] for _ in range(2)])
        forked = _verify(_receipt(hub, other_utid, 0, tmp_path / "r3.json"), hub_dir, memory)
        assert forked.exit_code == 1
        assert "FORK" in forked.output and "two roots for tree size 5" in forked.output
        evidence = json.loads(memory.read_text())["forks"]
        assert len(evidence) == 1 and evidence[0]["remembered"] != evidence[0]["seen"]
    finally:
        hub.stop()
