"""A full disk never corrupts the spool or loses a reading; the agent recovers by itself.

The spool lives on a real 1 MiB tmpfs that a ballast file fills (a true ENOSPC from the
kernel, not a simulated error); deleting the ballast is "space returns". Mounting needs
root: elsewhere the test skips and says so (in CI it must run).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.runtime import STOPPED_UNCOMMITTED, AgentRuntime, build_runtime
from agent.spool import RESTART_REASON, Spool
from attestation import parse_microproof, verify_chain
from attestation.signers.software import SoftwareSigner
from tests.conftest import missing
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        missing("mounting a small tmpfs for the disk-full test needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        missing(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave_bytes: int) -> Path:
    """Fill the disk to ENOSPC, then give ``leave_bytes`` back. Sizing the ballast from
    statvfs raced the running agent's own writes (on a slow machine the spool grew past the
    margin and the ballast write itself hit ENOSPC)."""
    ballast = mnt / "ballast"
    with ballast.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    os.truncate(ballast, max(0, ballast.stat().st_size - leave_bytes))
    return ballast


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
    ballast = _fill(disk, leave_bytes=8 * 1024)
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
