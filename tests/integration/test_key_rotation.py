"""``factoryops provision rotate`` against a real hub (uvicorn, SQLite): a development key
file and a SIMULATED TPM (swtpm with an EK certificate from a local test maker CA) each move
to a new key, the hub links the old and new UTIDs, the chain continues under the new key,
and the old key is retired. Refusals change nothing (ADR 0038).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from agent.config import AgentConfig, load_config
from agent.runtime import AgentRuntime, build_runtime
from agent.spool import Spool
from agent.uplink import register_device
from attestation.localports import free_port
from attestation.microproof import parse_microproof
from attestation.signers.base import Signer
from attestation.signers.software import SoftwareSigner
from attestation.utid import utid_bytes, utid_text
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from factoryops.provision_cmd import rotate
from tests.conftest import missing, require_module
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)


def _write_config(tmp: Path, hub_url: str, device: str) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f'[device]\nname = "gw"\n{device}\n'
        f'[hub]\nurl = "{hub_url}"\ntimeout_s = 5.0\n'
        "[window]\nmax_readings = 50\nmax_ms = 50\n"
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n"
    )
    return path


def _utid(signer: Signer) -> str:
    return utid_text(utid_bytes(signer.public_key_der()))


async def _run(cfg: AgentConfig, signer: Signer, done: Callable[[AgentRuntime], bool]) -> None:
    rt = build_runtime(cfg, signer, [Ticker(per_batch=10, period_s=0.01)])
    stop = asyncio.Event()
    task = asyncio.create_task(rt.run(stop))
    try:
        await until(lambda: done(rt) or task.done(), what="the agent's uploads")
    finally:
        stop.set()
        await task
    assert rt.uplink is not None
    assert rt.uplink.stats.stopped is None, rt.uplink.stats.stopped


def _synced(n: int) -> Callable[[AgentRuntime], bool]:
    return lambda rt: rt.uplink is not None and rt.uplink.stats.synced_windows >= n


def _windows(hub: HubServer, utid: str) -> list[tuple[int, bytes]]:
    with sqlite3.connect(hub.settings.data_dir / "hub.db") as db:
        rows = db.execute(
            "SELECT window, cose FROM windows WHERE utid = ? ORDER BY window", (utid,)
        ).fetchall()
    return [(int(w), bytes(c)) for w, c in rows]


def _rotate(cfg_path: Path, *args: str) -> Result:
    return CliRunner().invoke(rotate, ["--config", str(cfg_path), *args])


def _device(hub: HubServer, utid: str) -> dict[str, Any]:
    r = httpx.get(f"{hub.url}/v1/devices/{utid}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _assert_continues(hub: HubServer, old: str, new: str) -> None:
    """The new key's first proof chains onto the old key's last, window and seq after it."""
    before, after = _windows(hub, old), _windows(hub, new)
    assert before and after
    last_w, last_cose = before[-1]
    first_w, first_cose = after[0]
    first = parse_microproof(first_cose).proof
    assert first_w == last_w + 1
    assert first.prev == hashlib.sha256(last_cose).digest()
    assert first.first_seq == parse_microproof(last_cose).proof.last_seq + 1
    assert first.reset is None  # nothing was lost: no reset record
    assert [w for w, _ in after] == list(range(first_w, first_w + len(after)))


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    server = HubServer(
        HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    ).start()
    yield server
    server.stop()


async def test_a_software_key_rotates_and_the_chain_continues_under_the_new_key(
    hub: HubServer, tmp_path: Path
) -> None:
    cfg_path = _write_config(tmp_path, hub.url, 'signer = "software"\nkey_file = "device.key"')
    cfg = load_config(cfg_path)
    old = SoftwareSigner.load_or_create(cfg.device.key_file)
    await asyncio.to_thread(
        register_device, hub.url, hub.settings.admin_token, old, name="gw", state_dir=tmp_path
    )
    await _run(cfg, old, _synced(2))

    result = await asyncio.to_thread(_rotate, cfg_path)
    assert result.exit_code == 0, result.output
    new = SoftwareSigner.load(cfg.device.key_file)
    old_utid, new_utid = _utid(old), _utid(new)
    assert new_utid != old_utid
    assert f"rotated: {old_utid} -> {new_utid}" in result.output
    retired = await asyncio.to_thread(lambda: list(tmp_path.glob("device.key.retired-*")))
    assert len(retired) == 1
    assert _utid(SoftwareSigner.load(retired[0])) == old_utid  # kept, no longer accepted
    assert not (tmp_path / "device.key.rotating").exists()
    # the hub links both ways; the old key is revoked
    was, now = _device(hub, old_utid), _device(hub, new_utid)
    assert (was["revoked"], was["rotated_to"]) == (True, new_utid)
    assert (now["revoked"], now["rotated_from"]) == (False, old_utid)
    cert = (tmp_path / "device-cert.pem").read_text()
    assert cert.startswith("-----BEGIN CERTIFICATE-----")

    await _run(load_config(cfg_path), new, _synced(2))
    _assert_continues(hub, old_utid, new_utid)
    # the old key is retired: the hub serves it nothing more
    head = await asyncio.to_thread(httpx.get, f"{hub.url}/v1/devices/{old_utid}/head")
    assert (head.status_code, head.json()["error"]) == (403, "revoked_device")


def _rotation_link(hub: HubServer, utid: str, rel: str) -> str:
    """The UTID the device page of ``utid`` links to as ``rel`` (next: rotated to, prev: from),
    after checking the page itself answers."""
    page = httpx.get(f"{hub.url}/devices/{utid}")
    assert page.status_code == 200, page.text
    links = re.findall(rf'<a href="/devices/(utid:[0-9a-f]{{64}})" rel="{rel}">', page.text)
    assert len(links) == 1, f"{utid}: {len(links)} rel={rel} links"
    return str(links[0])


def test_the_device_pages_link_the_old_key_and_the_new_both_ways(
    hub: HubServer, tmp_path: Path
) -> None:
    cfg_path = _write_config(tmp_path, hub.url, 'signer = "software"\nkey_file = "device.key"')
    old = SoftwareSigner.load_or_create(load_config(cfg_path).device.key_file)
    register_device(hub.url, hub.settings.admin_token, old, name="gw", state_dir=tmp_path)
    result = _rotate(cfg_path)
    assert result.exit_code == 0, result.output
    old_utid, new_utid = _utid(old), _utid(SoftwareSigner.load(tmp_path / "device.key"))
    # each link resolves (the page it names answers 200) and leads back
    assert _rotation_link(hub, old_utid, "next") == new_utid
    assert _rotation_link(hub, new_utid, "prev") == old_utid
    assert 'rel="prev"' not in httpx.get(f"{hub.url}/devices/{old_utid}").text  # genesis key


def test_a_rotation_with_the_hub_unreachable_changes_nothing(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    cfg_path = _write_config(tmp_path, down, 'signer = "software"\nkey_file = "device.key"')
    key = load_config(cfg_path).device.key_file
    SoftwareSigner.load_or_create(key)
    before = key.read_bytes()
    result = _rotate(cfg_path, "--timeout", "2")
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)
    assert "cannot reach the hub" in str(result.exception)
    assert "nothing was changed" in getattr(result.exception, "hint", "")
    assert key.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml", "device.key"]


async def test_a_rotation_with_windows_not_uploaded_is_refused(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    cfg_path = _write_config(tmp_path, down, 'signer = "software"\nkey_file = "device.key"')
    cfg = load_config(cfg_path)
    signer = SoftwareSigner.load_or_create(cfg.device.key_file)
    rt = build_runtime(cfg, signer, [Ticker(per_batch=10, period_s=0.01)])
    stop = asyncio.Event()
    task = asyncio.create_task(rt.run(stop))
    await until(lambda: rt.counters.windows_signed >= 2)
    stop.set()
    await task
    result = await asyncio.to_thread(_rotate, cfg_path)
    assert result.exit_code != 0
    assert "not acknowledged by the hub yet" in str(result.exception)
    assert not (tmp_path / "device.key.rotating").exists()
    spool = Spool(cfg.spool.path)
    try:
        assert spool.counts()["acked"] == 0  # untouched
    finally:
        spool.close()


async def test_a_tpm_key_rotates_in_the_tpm_and_the_hub_links_the_utids(
    hub: HubServer, tmp_path: Path
) -> None:
    if shutil.which("swtpm_setup") is None:
        missing("swtpm and swtpm_setup are not installed (apt install swtpm swtpm-tools)")
    require_module("tpm2_pytss", "tpm2-pytss is not installed (uv sync --extra tpm)")
    from attestation.signers.tpm import ROTATION_HANDLE, TpmSigner
    from provisioning.enroll import enroll, read_enrollment
    from provisioning.swtpm import EkCa, SwtpmProcess, manufacture
    from provisioning.tpm_identity import TpmIdentity

    ca = EkCa(tmp_path / "ca")
    manufacture(tmp_path / "tpm", ca)
    tpm = SwtpmProcess(tmp_path / "tpm").start()
    try:
        # the hub trusts this (test) TPM maker; the gateway enrolls as a technician would
        (hub.settings.data_dir / "ek-ca").mkdir(exist_ok=True)
        for cert in ca.cert_paths:
            shutil.copy(cert, hub.settings.data_dir / "ek-ca" / cert.name)
        r = await asyncio.to_thread(
            httpx.post,
            f"{hub.url}/v1/enrollment-tokens",
            json={"site": "plant-1"},
            headers={"authorization": f"Bearer {hub.settings.admin_token}"},
        )
        state = tmp_path / "state"
        with TpmIdentity(tpm.tcti) as ident:
            first, _ = enroll(ident, hub.url, r.json()["token"], name="gw", state_dir=state)
        cfg_path = _write_config(tmp_path, hub.url, f'signer = "tpm"\ntcti = "{tpm.tcti}"')
        cfg = load_config(cfg_path)
        old = TpmSigner.open(tpm.tcti)
        try:
            await _run(cfg, old, _synced(1))
        finally:
            old.close()

        result = await asyncio.to_thread(_rotate, cfg_path, "--state-dir", str(state))
        assert result.exit_code == 0, result.output
        new = TpmSigner.open(tpm.tcti, create=False)
        try:
            new_utid = _utid(new)
            assert new_utid != first.utid
            assert f"rotated: {first.utid} -> {new_utid}" in result.output
            with TpmIdentity(tpm.tcti) as ident:  # the staging handle is free again
                assert ROTATION_HANDLE not in ident.persistent()
            was, now = _device(hub, first.utid), _device(hub, new_utid)
            assert (was["revoked"], was["rotated_to"]) == (True, new_utid)
            assert (now["key_kind"], now["rotated_from"]) == ("tpm", first.utid)
            done = read_enrollment(state)
            assert done is not None and done.utid == new_utid
            await _run(cfg, new, _synced(1))  # authenticates with a token for the new key
        finally:
            new.close()
        _assert_continues(hub, first.utid, new_utid)
    finally:
        tpm.stop()
