"""The uplink's answers from a real hub: a refusal stops it loudly and keeps the proof;
a hub restored from a backup gets the windows it lost again. Real uvicorn hub, SQLite.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.config import AgentConfig, parse_config
from agent.connectors.base import Emit, Sample
from agent.logwatch import LogWatch
from agent.outbox import WINDOWS_GONE
from agent.runtime import AgentRuntime, build_runtime
from agent.spool import WAL_PAGES, Spool
from agent.uplink import register_device
from attestation.signers.software import SoftwareSigner
from cloud_sync.server import HubServer
from cloud_sync.settings import HubLimits, HubSettings
from tests.hubkit import Device, declared_upload, hub_metric, hub_readings, register, upload
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


def _config(tmp: Path, hub_url: str) -> AgentConfig:
    return parse_config(
        f'[device]\nname = "gw"\n[hub]\nurl = "{hub_url}"\ntimeout_s = 2.0\n'
        'log_key = "hub-log.vkey"\n'
        "[window]\nmax_readings = 50\nmax_ms = 50\n"
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(tmp / "agent.toml"),
        base_dir=tmp,
    )


async def _run(
    cfg: AgentConfig, signer: SoftwareSigner, done: Callable[[AgentRuntime], bool]
) -> AgentRuntime:
    runtime = build_runtime(cfg, signer, [Ticker(per_batch=10, period_s=0.01)])
    if runtime.logwatch is not None:
        runtime.logwatch.interval_s = 0.2
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await until(lambda: done(runtime))
    stop.set()
    await task
    return runtime


async def _hub_and_gateway(
    tmp: Path, hub_dir: Path
) -> tuple[HubServer, AgentConfig, SoftwareSigner]:
    """A hub started on ``hub_dir``, and a gateway's config and key registered with it."""
    hub = HubServer(HubSettings.create(hub_dir, allow_software_keys=True)).start()
    cfg, signer = _config(tmp, hub.url), SoftwareSigner.generate()
    await asyncio.to_thread(
        register_device, hub.url, hub.settings.admin_token, signer, name="gw", state_dir=tmp
    )
    return hub, cfg, signer


def _hub_seqs(hub_dir: Path) -> list[int]:
    return sorted(r.seq for r in hub_readings(hub_dir / "hub.db"))


async def _every_committed_reading_at_the_hub(cfg: AgentConfig, hub_dir: Path) -> None:
    """Every reading the gateway's spool committed reaches the hub, once each."""
    spool = Spool(cfg.spool.path)
    committed = spool.state().next_seq
    spool.close()
    await until(lambda: len(_hub_seqs(hub_dir)) == committed)
    assert _hub_seqs(hub_dir) == list(range(committed))


async def test_an_unknown_device_stops_the_uplink_and_keeps_the_proof_for_later(
    tmp_path: Path,
) -> None:
    hub = HubServer(HubSettings.create(tmp_path / "hub", allow_software_keys=True)).start()
    try:
        cfg, signer = _config(tmp_path, hub.url), SoftwareSigner.generate()
        first = await _run(cfg, signer, lambda r: r.status()["uplink_stopped"] is not None)
        assert "unknown_device" in str(first.status()["uplink_stopped"])
        spool = Spool(cfg.spool.path)  # a restart gives refused proofs another chance
        assert spool.counts()["acked"] == 0
        assert spool.pending(1)[0].window == 0
        spool.close()
        await asyncio.to_thread(
            register_device,
            hub.url,
            hub.settings.admin_token,
            signer,
            name="gw",
            state_dir=tmp_path,
        )
        await _run(cfg, signer, lambda r: r.status()["proofs_synced"] >= 5)
        await _every_committed_reading_at_the_hub(cfg, tmp_path / "hub")
    finally:
        hub.stop()


async def _synced_since_a_backup(
    tmp: Path, hub_dir: Path
) -> tuple[HubServer, AgentConfig, SoftwareSigner, Path]:
    """A gateway syncing to a hub whose database is backed up, then syncing more; the hub
    is stopped when this returns."""
    hub, cfg, signer = await _hub_and_gateway(tmp, hub_dir)
    await _run(cfg, signer, lambda r: r.status()["proofs_synced"] >= 3)
    hub.stop()
    backup = tmp / "hub-backup.db"
    shutil.copy(hub_dir / "hub.db", backup)
    hub = HubServer(hub.settings, port=hub.port).start()
    try:
        await _run(cfg, signer, lambda r: r.status()["proofs_synced"] >= 6)
    finally:
        hub.stop()
    return hub, cfg, signer, backup


def _restored(hub: HubServer, hub_dir: Path, backup: Path) -> HubServer:
    """The stopped hub started again on its backup: it loses what it acknowledged since."""
    shutil.copy(backup, hub_dir / "hub.db")
    for suffix in ("-wal", "-shm"):
        (hub_dir / f"hub.db{suffix}").unlink(missing_ok=True)
    return HubServer(hub.settings, port=hub.port).start()


async def test_a_hub_restored_from_an_older_backup_gets_the_lost_windows_again(
    tmp_path: Path,
) -> None:
    hub_dir = tmp_path / "hub"
    hub, cfg, signer, backup = await _synced_since_a_backup(tmp_path, hub_dir)
    hub = _restored(hub, hub_dir, backup)
    try:
        runtime = await _run(
            cfg, signer, lambda r: r.uplink is not None and r.uplink.stats.rewinds >= 1
        )
        assert runtime.uplink is not None
        spool = Spool(cfg.spool.path)
        committed = spool.state().next_seq
        spool.close()
        await _run(cfg, signer, lambda r: len(_hub_seqs(hub_dir)) >= committed)
        spool = Spool(cfg.spool.path)
        final = spool.state().next_seq
        spool.close()
        await until(lambda: len(_hub_seqs(hub_dir)) == final)
        assert _hub_seqs(hub_dir) == list(range(final))  # whole again, nothing twice
        # the hub re-logged the same proofs: the same history, no false fork alarm
        watch = LogWatch(
            hub.url, tmp_path / "hub-log.vkey", cfg.spool.path.with_name("hub-checkpoints.json")
        )
        assert (await asyncio.to_thread(watch.check_once)).status in ("newer", "same")
        assert watch.fork is None
    finally:
        hub.stop()


async def test_a_hub_restored_from_before_the_dropped_proofs_stops_the_uplink_not_the_agent(
    tmp_path: Path,
) -> None:
    hub_dir = tmp_path / "hub"
    hub, cfg, signer, backup = await _synced_since_a_backup(tmp_path, hub_dir)
    spool = Spool(cfg.spool.path)
    # the cap reached (a full disk sheds with cap 0 too): every acknowledged proof but the
    # newest goes, among them those the backup lacks
    plan = spool.shed(0)
    kept = spool.oldest_window()
    spool.close()
    assert plan.proofs and kept == plan.proofs[-1] + 1
    hub = _restored(hub, hub_dir, backup)
    try:
        stopped_at: list[int] = []

        def stopped_and_sealing_on(r: AgentRuntime) -> bool:
            gauge = r.metrics.registry.get_sample_value
            if r.uplink is None or gauge("factoryops_agent_uplink_stopped") != 1:
                return False
            stopped_at.append(r.counters.windows_signed)
            return r.counters.windows_signed >= stopped_at[0] + 3

        runtime = await _run(cfg, signer, stopped_and_sealing_on)  # a crash would raise here
        assert runtime.uplink is not None
        up = runtime.uplink.stats
        assert up.stopped_code == WINDOWS_GONE
        assert f"holds no window before {kept}" in str(up.stopped)
        assert up.rewinds == 0
        gauge = runtime.metrics.registry.get_sample_value
        assert gauge("factoryops_agent_spool_proofs_dropped") == len(plan.proofs)
        spool = Spool(cfg.spool.path)
        counts = spool.counts()
        spool.close()
        assert counts["pending"] >= 3  # sealed on after the stop, nothing unsynced dropped
        assert counts["proofs_dropped"] == len(plan.proofs)
    finally:
        hub.stop()


async def test_the_agent_reports_a_hub_that_forked_its_log(tmp_path: Path) -> None:
    hub_dir = tmp_path / "hub"
    hub, cfg, signer = await _hub_and_gateway(tmp_path, hub_dir)
    hub.stop()
    shutil.copy(hub_dir / "hub.db", tmp_path / "hub-backup.db")  # registered, log empty
    hub = HubServer(hub.settings, port=hub.port).start()
    try:
        runtime = await _run(
            cfg,
            signer,
            lambda r: (
                r.logwatch is not None
                and r.logwatch.checks >= 2
                and r.status()["proofs_synced"] >= 2
            ),
        )
        assert runtime.logwatch is not None and runtime.logwatch.fork is None
        note = await asyncio.to_thread(httpx.get, f"{hub.url}/v1/log/checkpoint")
        size = int(note.text.split("\n")[1])  # the tree the agent has seen
        hub.stop()
        shutil.copy(tmp_path / "hub-backup.db", hub_dir / "hub.db")
        for suffix in ("-wal", "-shm"):
            (hub_dir / f"hub.db{suffix}").unlink(missing_ok=True)
        hub = HubServer(hub.settings, port=hub.port).start()
        other = Device()  # another device's proofs take the places in the tree
        register(hub.url, hub.settings.admin_token, other, "intruder")
        upload(hub.url, *[other.window(3)[:2] for _ in range(size)])
        runtime = await _run(
            cfg,
            signer,
            lambda r: r.status()["hub_log"] is not None and "FORK" in str(r.status()["hub_log"]),
        )
        assert runtime.metrics.registry.get_sample_value("factoryops_agent_hub_log_fork") == 1
    finally:
        hub.stop()


async def test_the_agent_states_its_signed_storage_policy_and_the_hub_checks_it(
    tmp_path: Path,
) -> None:
    from attestation.policy import ShedPolicyStatement, sign_policy

    hub = HubServer(
        HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    ).start()
    try:
        cfg, signer = _config(tmp_path, hub.url), SoftwareSigner.generate()
        utid = await asyncio.to_thread(
            register_device,
            hub.url,
            hub.settings.admin_token,
            signer,
            name="gw",
            state_dir=tmp_path,
        )
        runtime = await _run(cfg, signer, lambda r: r.uplink is not None and r.uplink.policy_sent)
        assert runtime.uplink is not None
        doc = (await asyncio.to_thread(httpx.get, f"{hub.url}/v1/devices/{utid}")).json()
        policy = doc["storage_policy"]
        assert policy["disk_cap_bytes"] == cfg.spool.disk_cap_bytes
        assert (
            "never" in policy and "unacknowledged" in policy["never"]
        ) or "not acknowledged" in policy["never"]
        # someone else's signature, or edited bytes, are refused
        forged = sign_policy(ShedPolicyStatement(1, 0.5), SoftwareSigner.generate(), iat=1)
        edited = runtime.uplink.policy.replace(b"disk_cap_bytes", b"disk_cap_bytez")  # type: ignore[union-attr]  # the config names a hub, so the uplink exists
        for bad in (forged, edited):
            r = await asyncio.to_thread(
                httpx.post,
                f"{hub.url}/v1/devices/{utid}/policy",
                content=bad,
                headers={"content-type": "application/cose"},
            )
            assert r.status_code == 422 and r.json()["error"] == "bad_policy", r.text
    finally:
        hub.stop()


async def test_the_shutdown_upload_sends_a_proof_its_cancelled_sender_left_in_flight(
    tmp_path: Path,
) -> None:
    """A sender cancelled at shutdown between marking proofs sent and recording the hub's
    answer leaves them marked sent; the shutdown upload must send them again, not skip
    them (seen once in a loaded full-suite run: the hub lacked the last window after a clean
    stop). Here the agent signs windows while the hub is down, one of them is left marked
    sent as such a sender would leave it, and ``drain`` runs against the hub, back up."""
    from agent.outbox import OutboxEvent
    from agent.uplink import Uplink

    hub_dir = tmp_path / "hub"
    hub, cfg, signer = await _hub_and_gateway(tmp_path, hub_dir)
    hub.stop()
    await _run(cfg, signer, lambda r: r.counters.windows_signed >= 3)  # all stay queued
    spool = Spool(cfg.spool.path)
    try:
        first = spool.pending(1)[0].window
        spool.mark([first], OutboxEvent.SEND)  # sent, never answered: the sender was cancelled
        committed = spool.state().next_seq
        hub = HubServer(hub.settings, port=hub.port).start()

        async def call(fn: Callable[[], object]) -> object:
            return fn()

        uplink = Uplink(spool, hub.url, call)
        assert await uplink.drain()
        assert _hub_seqs(hub_dir) == list(range(committed))  # the in-flight window included
        assert spool.pending(1) == []
    finally:
        spool.close()
        hub.stop()


@dataclass
class Firehose:
    """Fast readings with long names: fills a spool quickly."""

    name: str = "firehose"
    batches: int = 0

    async def run(self, emit: Emit) -> None:
        signals = [f"line-7/press-3/hydraulics/{i:02d}/pressure-transducer-a" for i in range(50)]
        while True:
            now = time.time_ns()
            await emit([Sample(s, float(i), "bar", now) for i, s in enumerate(signals)])
            self.batches += 1
            await asyncio.sleep(0.005)


async def test_the_spool_keeps_its_cap_while_synced_and_keeps_unsynced_data_in_an_outage(
    tmp_path: Path,
) -> None:
    cap = 2 << 20
    hub_dir = tmp_path / "hub"
    hub = HubServer(HubSettings.create(hub_dir, allow_software_keys=True, open_reads=True)).start()
    cfg = parse_config(
        f'[device]\nname = "gw"\n[hub]\nurl = "{hub.url}"\ntimeout_s = 2.0\n'
        f"[window]\nmax_readings = 2000\nmax_ms = 100\n[spool]\ndisk_cap_bytes = {cap}\n"
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(tmp_path / "agent.toml"),
        base_dir=tmp_path,
    )
    signer = SoftwareSigner.generate()
    await asyncio.to_thread(
        register_device, hub.url, hub.settings.admin_token, signer, name="gw", state_dir=tmp_path
    )
    runtime = build_runtime(cfg, signer, [Firehose()])
    gauge = runtime.metrics.registry.get_sample_value
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    peak = 0.0

    async def watch(cond: Callable[[], bool]) -> None:
        nonlocal peak
        async with asyncio.timeout(120):
            while not cond():
                peak = max(peak, gauge("factoryops_agent_spool_bytes") or 0.0)
                await asyncio.sleep(0.02)

    try:
        # synced: the spool sheds acknowledged readings and stays near its cap
        await watch(lambda: runtime.counters.readings_committed > 60_000)
        synced_peak, peak = peak, 0.0
        bound = cap + 2 * WAL_PAGES * 4096  # the WAL, bounded too, counts against the cap
        assert synced_peak <= bound, synced_peak
        # an outage: unsynced proofs and readings are never dropped, so the spool grows
        await asyncio.to_thread(hub.stop)
        outage_start = runtime.counters.readings_committed
        await watch(lambda: runtime.counters.readings_committed > outage_start + 40_000)
        assert peak > cap  # kept, not shed
        hub = HubServer(hub.settings, port=hub.port).start()
        assert runtime.uplink is not None
        up = runtime.uplink.stats
        await watch(lambda: up.synced_windows >= runtime.counters.windows_signed - 2)
        caught_up = runtime.counters.windows_signed  # the next commits shed the backlog
        await watch(lambda: runtime.counters.windows_signed >= caught_up + 5)
        drained_at, peak = runtime.counters.readings_committed, 0.0
        await watch(lambda: runtime.counters.readings_committed > drained_at + 40_000)
        assert peak <= bound, peak  # drained, shed, bounded again
    finally:
        stop.set()
        await task  # a clean stop uploads what is left
        hub.stop()
    committed = runtime.counters.readings_committed
    assert _hub_seqs(hub_dir) == list(range(committed))  # all of it, once, in order


async def test_an_overloaded_hub_is_sent_the_proofs_again_once_it_has_room(
    tmp_path: Path,
) -> None:
    """Two clients hold the hub's whole body budget (ADR 0051): the gateway's uploads are
    answered 503 overloaded, kept and sent again once the clients go; nothing is lost."""
    mib = 1 << 20
    limits = HubLimits(max_body_bytes=mib, max_decompressed_bytes=mib, max_held_body_bytes=2 * mib)
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True, limits=limits)
    hub = HubServer(settings).start()

    def held() -> float:
        return hub_metric(hub.url, settings.admin_token, "body_bytes_held")

    try:
        cfg, signer = _config(tmp_path, hub.url), SoftwareSigner.generate()
        await asyncio.to_thread(
            register_device, hub.url, settings.admin_token, signer, name="gw", state_dir=tmp_path
        )
        holders = [declared_upload(hub.port, mib) for _ in range(2)]  # every body waits now
        try:
            await until(lambda: held() == 2 * mib, what="the budget held by the two clients")
            refused = await _run(
                cfg, signer, lambda r: r.uplink is not None and r.uplink.stats.failures >= 1
            )
            assert refused.uplink is not None
            assert "overloaded" in str(refused.uplink.stats.last_error)
            assert refused.status()["uplink_stopped"] is None  # a 503 is never a refusal
            assert _hub_seqs(tmp_path / "hub") == []
        finally:
            for sock in holders:
                sock.close()
        await _run(cfg, signer, lambda r: r.status()["proofs_synced"] >= 3)
        await _every_committed_reading_at_the_hub(cfg, tmp_path / "hub")
        assert held() == 0
    finally:
        hub.stop()
