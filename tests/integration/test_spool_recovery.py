"""A lost or forked spool against a real hub (uvicorn, SQLite, software signer): the chain
continues from the hub's head with a signed reset record (key 18), and a ``fork`` answer
names the recover command, which fixes it (ADR 0027).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from agent.cli import agent
from agent.config import AgentConfig, load_config
from agent.health import HealthLimits, problems
from agent.runtime import AgentRuntime, build_runtime
from agent.spool import Spool
from agent.uplink import register_device
from attestation.localports import free_port
from attestation.microproof import ResetRecord, parse_microproof
from attestation.signers.software import SoftwareSigner
from attestation.utid import utid_bytes, utid_text
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from hil_tests.proxy import FaultProxy
from tests.integration.test_agent_uplink import _run
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


def _write_config(tmp: Path, hub_url: str, timeout_s: float = 2.0) -> AgentConfig:
    path = tmp / "agent.toml"
    path.write_text(
        '[device]\nname = "gw"\nsigner = "software"\nkey_file = "device.key"\n'
        f'[hub]\nurl = "{hub_url}"\ntimeout_s = {timeout_s}\n'
        "[window]\nmax_readings = 50\nmax_ms = 50\n"
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n"
    )
    return load_config(path)


def _synced(n: int) -> Callable[[AgentRuntime], bool]:
    return lambda rt: rt.uplink is not None and rt.uplink.stats.synced_windows >= n


def _hub_windows(hub: HubServer) -> list[tuple[int, bytes]]:
    with sqlite3.connect(hub.settings.data_dir / "hub.db") as db:
        return db.execute("SELECT window, cose FROM windows ORDER BY window").fetchall()


def _delete_spool(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()


def _recover(cfg_path: Path) -> Result:
    return CliRunner().invoke(agent, ["recover", "--config", str(cfg_path)])


def _free_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def _gateway(tmp: Path) -> tuple[HubServer, AgentConfig, SoftwareSigner]:
    settings = HubSettings.create(tmp / "hub", allow_software_keys=True, open_reads=True)
    hub = HubServer(settings).start()
    cfg = _write_config(tmp, hub.url)
    signer = SoftwareSigner.load_or_create(tmp / "device.key")
    await asyncio.to_thread(
        register_device, hub.url, hub.settings.admin_token, signer, name="gw", state_dir=tmp
    )
    return hub, cfg, signer


async def test_a_lost_spool_continues_the_hubs_chain_with_a_signed_reset_record(
    tmp_path: Path,
) -> None:
    hub, cfg, signer = await _gateway(tmp_path)
    try:
        await _run(cfg, signer, _synced(3))
        head = _hub_windows(hub)[-1]
        # a healthy gateway: recover changes nothing and says so
        before = Spool(cfg.spool.path)
        state = before.state()
        before.close()
        result = await asyncio.to_thread(_recover, tmp_path / "agent.toml")
        assert result.exit_code == 0, result.output
        assert "healthy" in result.output
        after = Spool(cfg.spool.path)
        assert after.state() == state
        after.close()

        _delete_spool(cfg.spool.path)
        rt = await _run(cfg, signer, _synced(2))
        assert rt.uplink is not None
        assert rt.uplink.stats.stopped is None  # no fork
        windows = _hub_windows(hub)
        assert [w for w, _ in windows] == list(range(len(windows)))  # one unbroken chain
        first_new = dict(windows)[head[0] + 1]
        proof = parse_microproof(first_new).proof
        assert proof.prev == hashlib.sha256(head[1]).digest()
        last_seq = parse_microproof(head[1]).proof.last_seq
        assert proof.reset == ResetRecord("spool_lost", head[0], last_seq)
        assert proof.first_seq == last_seq + 1
        # the hub serves its head, and the reset record of a window that carries one
        utid = utid_text(utid_bytes(signer.public_key_der()))
        r = await asyncio.to_thread(httpx.get, f"{hub.url}/v1/devices/{utid}/head")
        assert r.status_code == 200
        assert r.json()["head_hash"] == hashlib.sha256(windows[-1][1]).hexdigest()
        assert r.json()["window"] == windows[-1][0]
        page = await asyncio.to_thread(httpx.get, f"{hub.url}/devices/{utid}")
        assert page.status_code == 200
        assert f"spool_lost: continues window {head[0]} (seq {last_seq})" in page.text
    finally:
        hub.stop()


async def test_a_forked_spool_is_reported_with_the_recover_command_which_fixes_it(
    tmp_path: Path,
) -> None:
    hub, cfg, signer = await _gateway(tmp_path)
    try:
        await _run(cfg, signer, _synced(2))
        _delete_spool(cfg.spool.path)
        # the hub is unreachable when the new spool starts: it starts at genesis
        offline = _write_config(tmp_path, _free_port_url())
        await _run(offline, signer, lambda rt: rt.counters.windows_signed >= 2)
        cfg = _write_config(tmp_path, hub.url)
        seen: dict[str, object] = {}

        def stopped(rt: AgentRuntime) -> bool:
            if rt.uplink is None or rt.uplink.stats.stopped is None:
                return False
            rt._observe_spool()  # the metric the health loop sets, at once
            seen["metric"] = rt.metrics.registry.get_sample_value("factoryops_agent_uplink_stopped")
            seen["doc"] = rt.status_document(0, 0, rt.spool.counts(), 1 << 30)
            return True

        await _run(cfg, signer, stopped)
        assert seen["metric"] == 1
        doc = seen["doc"]
        assert isinstance(doc, dict)
        assert doc["uplink"]["stopped_code"] == "fork"
        found = problems(json.loads(json.dumps(doc)), 0, HealthLimits())
        assert any("factoryops agent recover --config" in p for p in found), found

        result = await asyncio.to_thread(_recover, tmp_path / "agent.toml")
        assert result.exit_code == 0, result.output
        assert "moved the old spool" in result.output
        aside = await asyncio.to_thread(lambda: list(tmp_path.glob("spool.db.forked-*")))
        assert len([p for p in aside if not p.name.endswith(("-wal", "-shm"))]) == 1
        head = _hub_windows(hub)[-1]

        rt = await _run(cfg, signer, _synced(2))
        assert rt.uplink is not None
        assert rt.uplink.stats.stopped is None
        proof = parse_microproof(dict(_hub_windows(hub))[head[0] + 1]).proof
        assert proof.reset is not None
        assert proof.reset.reason == "spool_forked"
        assert proof.reset.hub_window == head[0]
    finally:
        hub.stop()


@asynccontextmanager
async def _lost_spool_behind_a_silent_hub(
    tmp: Path,
) -> AsyncIterator[tuple[HubServer, FaultProxy, AgentRuntime, Ticker, tuple[int, bytes], int]]:
    """A gateway whose spool was lost, restarting behind a proxy that holds the hub's answer
    (partitioned) until the test heals it: (hub, proxy, runtime, its ticker, the hub's
    head window and bytes, that head's last seq)."""
    hub, cfg, signer = await _gateway(tmp)
    proxy = await FaultProxy("127.0.0.1", int(hub.url.rsplit(":", 1)[1])).start()
    try:
        await _run(cfg, signer, _synced(2))
        head = _hub_windows(hub)[-1]
        last_seq = parse_microproof(head[1]).proof.last_seq
        _delete_spool(cfg.spool.path)
        proxy.partition(True)  # the hub accepts the connection and does not answer yet
        # the lookup's bound is the smaller of the hub timeout and head_timeout_s: both long,
        # so a loaded machine's stall before the test heals the proxy is not a timeout (at
        # 2 s a CI run once fell back to genesis before the heal)
        slow = _write_config(tmp, f"http://127.0.0.1:{proxy.port}", timeout_s=60.0)
        ticker = Ticker(per_batch=10, period_s=0.01)
        rt = build_runtime(slow, signer, [ticker], head_timeout_s=60.0)
        yield hub, proxy, rt, ticker, head, last_seq
    finally:
        await proxy.stop()
        hub.stop()


async def test_a_fresh_spool_acquires_while_the_hubs_head_is_asked_for(tmp_path: Path) -> None:
    """The head lookup runs beside acquisition: readings taken while the hub has not answered
    yet are numbered after the hub's head once it answers (nothing acquired at genesis)."""
    async with _lost_spool_behind_a_silent_hub(tmp_path) as (hub, proxy, rt, ticker, head, last):
        stop = asyncio.Event()
        task = asyncio.create_task(rt.run(stop))
        try:
            await until(lambda: ticker.batches >= 3, what="readings acquired at once")
            assert rt.head_pending  # acquired while the head lookup is still waiting
            assert rt.counters.readings_acquired == 0  # nothing numbered at genesis
            held = ticker.batches * 10
            proxy.partition(False)
            await until(lambda: _synced(2)(rt), what="windows synced after the head")
        finally:
            stop.set()
            await task
        assert rt.uplink is not None
        assert rt.uplink.stats.stopped is None  # no fork
        proof = parse_microproof(dict(_hub_windows(hub))[head[0] + 1]).proof
        assert proof.first_seq == last + 1
        assert proof.reset == ResetRecord("spool_lost", head[0], last)
        assert rt.counters.readings_committed >= held  # the held readings were kept


async def test_a_stop_while_the_head_is_asked_for_waits_for_the_answer(tmp_path: Path) -> None:
    """A stop during the lookup seals what was acquired on the chain the hub holds."""
    async with _lost_spool_behind_a_silent_hub(tmp_path) as (_, proxy, rt, ticker, head, last):
        stop = asyncio.Event()
        task = asyncio.create_task(rt.run(stop))
        await until(lambda: ticker.batches >= 3, what="readings acquired at once")
        stop.set()
        proxy.partition(False)  # the answer comes after the stop was asked for
        await task
        spool = Spool(rt.config.spool.path)
        try:
            cose, readings = spool.window_readings(head[0] + 1)
        finally:
            spool.close()
        assert readings[0].seq == last + 1
        assert parse_microproof(cose).proof.reset == ResetRecord("spool_lost", head[0], last)
