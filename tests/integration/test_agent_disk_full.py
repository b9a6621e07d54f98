"""A full disk never corrupts the spool or loses a reading; the agent recovers by itself.

The spool lives on a real 1 MiB tmpfs that a ballast file fills (``tests/smalldisk.py``:
a true ENOSPC from the kernel, not a simulated error); deleting the ballast is "space
returns".
"""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.runtime import STOPPED_UNCOMMITTED, AgentRuntime, build_runtime
from agent.spool import RESTART_REASON, Spool
from attestation import parse_microproof, verify_chain
from attestation.signers.software import SoftwareSigner
from tests.smalldisk import fill, small_disk_at
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk_at(tmp_path / "disk", "1m") as mnt:
        yield mnt


def _config(disk: Path) -> AgentConfig:
    return parse_config(
        '[device]\nname = "gw"\n[window]\nmax_readings = 200\nmax_ms = 50\n'
        f'[spool]\npath = "{disk / "spool.db"}"\n[metrics]\nport = 0\n'
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(disk / "a.toml"),
        base_dir=disk,
    )


async def _start_then_fill(
    disk: Path, **kw: float
) -> tuple[AgentRuntime, Ticker, asyncio.Event, asyncio.Task[None], Path]:
    cfg = _config(disk)
    ticker = Ticker(per_batch=50, period_s=0.005)
    runtime = build_runtime(cfg, SoftwareSigner.generate(), [ticker], **kw)  # type: ignore[arg-type]  # test overrides of AgentRuntime fields, passed as **kw
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await until(lambda: runtime.counters.windows_signed >= 3)
    ballast = fill(disk, leave_bytes=8 * 1024)
    await until(lambda: runtime.counters.disk_full_retries >= 2)
    return runtime, ticker, stop, task, ballast


async def test_disk_full_then_space_returns_loses_nothing(small_disk: Path) -> None:
    runtime, ticker, stop, task, ballast = await _start_then_fill(small_disk)
    cfg = runtime.config
    assert runtime.metrics_server is not None
    url = f"http://127.0.0.1:{runtime.metrics_server.port}/metrics"
    scraped = await asyncio.to_thread(
        lambda: urllib.request.urlopen(url, timeout=5).read().decode()
    )
    assert "factoryops_agent_spool_retries_total" in scraped
    assert 'factoryops_agent_readings_total{connector="ticker"}' in scraped
    stuck = runtime.counters.readings_committed
    ballast.unlink()  # space returns
    await until(lambda: runtime.counters.readings_committed > stuck + 1000)
    stop.set()
    await task

    c = runtime.counters
    assert c.readings_committed == c.readings_acquired == ticker.batches * ticker.per_batch
    with sqlite3.connect(cfg.spool.path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        proofs = [b for (b,) in db.execute("SELECT cose FROM windows ORDER BY window")]
        (stored,) = db.execute("SELECT COUNT(*) FROM readings").fetchone()
    assert stored == c.readings_committed  # no hub: nothing was synced, nothing shed
    verify_chain(proofs)
    assert all(parse_microproof(p).proof.gaps == () for p in proofs)  # nothing went missing


async def test_a_stop_while_the_disk_stays_full_leaves_a_signed_gap_not_a_silent_one(
    small_disk: Path,
) -> None:
    runtime, _, stop, task, ballast = await _start_then_fill(small_disk, stop_grace_s=1.0)
    stop.set()
    await task  # gives up on the full disk after the grace period
    acquired = runtime.counters.readings_acquired
    assert runtime.counters.readings_committed < acquired
    ballast.unlink()
    spool = Spool(runtime.config.spool.path)
    st = spool.state()
    assert st.next_seq == runtime.counters.readings_committed  # committed windows intact
    # every reading not committed is either back from the journal or owned up to
    recovered = {r.seq for w in spool.recovery(1000).windows for r in w.readings}
    stated = {s for g in spool.recovered_gaps for s in range(g.first, g.last + 1)}
    assert not recovered & stated
    assert set(range(st.next_seq, acquired)) <= recovered | stated
    assert {g.reason for g in spool.recovered_gaps} <= {STOPPED_UNCOMMITTED, RESTART_REASON}
    spool.close()
