"""The runtime journals readings long before their window is sealed, and an idle agent's seq
mark comes back to the next seq, so a kill then states no loss (ADR 0017)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.connectors.base import Emit, Sample
from agent.runtime import AgentRuntime, build_runtime
from agent.spool import Spool
from attestation.reading import Reading
from attestation.signers.software import SoftwareSigner
from tests.waiting import until


@dataclass
class Burst:
    """Emits ``batches`` batches of ``per_batch`` samples, then stays silent."""

    batches: int
    per_batch: int
    name: str = "burst"
    sent: int = 0

    async def run(self, emit: Emit) -> None:
        for _ in range(self.batches):
            await emit([Sample("s", float(i), "u", i) for i in range(self.per_batch)])
            self.sent += self.per_batch
            await asyncio.sleep(0.005)
        await asyncio.Event().wait()


def _journal(path: Path) -> tuple[int, int, int]:
    """(journal end, seq mark, rows) as another process would read them."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        journal_end, mark = db.execute("SELECT journal_next, reserved_seq FROM state").fetchone()
        (rows,) = db.execute("SELECT COUNT(*) FROM readings").fetchone()
    return journal_end, mark, rows


def _hour_long_windows(tmp_path: Path, journal_ms: int = 10) -> AgentConfig:
    """A config whose windows never close by themselves: only the journal holds readings."""
    return parse_config(
        '[device]\nname = "gw"\n[window]\nmax_readings = 65536\nmax_ms = 3600000\n'
        f'[spool]\npath = "spool.db"\njournal_ms = {journal_ms}\n'
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(tmp_path / "a.toml"),
        base_dir=tmp_path,
    )


def _bursting(tmp_path: Path) -> tuple[AgentConfig, Burst, AgentRuntime]:
    """A runtime fed 10 batches of 20 samples whose window stays open for an hour."""
    cfg = _hour_long_windows(tmp_path)
    source = Burst(batches=10, per_batch=20)
    return cfg, source, build_runtime(cfg, SoftwareSigner.generate(), [source])


async def test_readings_are_durable_before_their_window_is_sealed_and_idle_states_nothing(
    tmp_path: Path,
) -> None:
    cfg, _, runtime = _bursting(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        # every reading journaled, the window still open (it would age after an hour)
        await until(lambda: _journal(cfg.spool.path)[::2] == (200, 200), what="journaled")
        assert runtime.counters.windows_signed == 0
        # nothing new for idle_ms: the mark comes back from one batch ahead to the next seq
        await until(lambda: _journal(cfg.spool.path)[1] == 200, what="the mark back")
    finally:
        stop.set()
        await task
    assert runtime.counters.readings_committed == 200


async def test_a_kill_of_an_idle_agent_recovers_its_open_window_and_states_no_loss(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    assert spool.recovery(10).windows == ()  # a fresh spool recovers nothing
    spool.journal([Reading(i, i, "s", 1.0, "u") for i in range(30)], mark=30)
    spool.close()  # killed while idle: the mark had come back to the journal's end
    again = Spool(path)
    recovery = again.recovery(1000)
    assert [len(w.readings) for w in recovery.windows] == [30]
    assert recovery.gaps == ()
    assert recovery.record is not None and recovery.record.recovered


async def test_readings_reach_the_file_before_any_fsync_and_numbering_waits_for_one(
    tmp_path: Path,
) -> None:
    """ADR 0032: a journal write is visible to another process (a kill -9 cannot lose it)
    while the disk has not synced anything, and no seq is numbered past the last synced
    mark (a power cut then still states its loss). The disk is made slow by holding the
    journal's fsync until the test lets it go."""
    cfg, source, runtime = _bursting(tmp_path)
    released = asyncio.Event()
    synced_marks: list[int] = []
    real_sync = runtime.spool.sync_journal
    loop = asyncio.get_running_loop()

    def slow_sync() -> None:  # a disk that syncs once, then takes as long as the test says
        if synced_marks:
            asyncio.run_coroutine_threadsafe(released.wait(), loop).result()
        synced_marks.append(_journal(cfg.spool.path)[1])
        real_sync()

    runtime.spool.sync_journal = slow_sync  # type: ignore[method-assign]  # the slow disk
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        # after the first fsync, numbering runs up to the mark it synced and stops there;
        # everything numbered is written although the next fsync has not finished
        await until(lambda: len(synced_marks) == 1, what="the first fsync")
        bound = synced_marks[0]
        await until(
            lambda: runtime.builder.next_seq == bound == _journal(cfg.spool.path)[2],
            what="the readings up to the synced mark written, none past it",
        )
        assert source.sent < 200
        released.set()
        await until(lambda: source.sent == 200, what="every batch emitted once syncs run")
        await until(lambda: _journal(cfg.spool.path)[::2] == (200, 200), what="journaled")
    finally:
        released.set()
        stop.set()
        await task
    assert synced_marks
    assert runtime.counters.readings_committed == 200


@dataclass
class AcksAfterJournal:
    """Emits one batch at a time and asks ``journaled()`` after each, as the MQTT connector
    does before an ack; records what the journal held when each answer came."""

    path: Path
    name: str = "acker"
    journaled: Callable[[], Awaitable[None]] | None = None
    held_at_answer: list[tuple[int, int]] = field(default_factory=list)  # (emitted, journaled)

    def bind_journaled(self, journaled: Callable[[], Awaitable[None]]) -> None:
        self.journaled = journaled

    async def run(self, emit: Emit) -> None:
        assert self.journaled is not None, "the runtime binds journaled() before run"
        emitted = 0
        for batch in range(5):
            await emit([Sample("s", float(batch), "u", batch * 10 + i) for i in range(7)])
            emitted += 7
            await self.journaled()
            self.held_at_answer.append((emitted, _journal(self.path)[0]))
        await asyncio.Event().wait()


async def test_journaled_returns_only_once_every_reading_emitted_before_it_is_journaled(
    tmp_path: Path,
) -> None:
    cfg = _hour_long_windows(tmp_path)
    source = AcksAfterJournal(cfg.spool.path)
    runtime = build_runtime(cfg, SoftwareSigner.generate(), [source])
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await until(lambda: len(source.held_at_answer) == 5, what="five answers")
    finally:
        stop.set()
        await task
    # the window never closed (an hour, 65,536 readings): only the journal can hold them
    assert runtime.counters.windows_signed == 1  # the stop's own seal
    assert all(journaled >= emitted for emitted, journaled in source.held_at_answer)


@dataclass
class PollingBurst(Burst):
    """A poller: each batch's samples are expected (covered) before its read, as Modbus does."""

    expect: Callable[[int], Awaitable[None]] | None = None

    def bind_expect(self, expect: Callable[[int], Awaitable[None]]) -> None:
        self.expect = expect

    async def run(self, emit: Emit) -> None:
        assert self.expect is not None, "the runtime binds expect() before run"
        for _ in range(self.batches):
            await self.expect(self.per_batch)
            await emit([Sample("s", float(i), "u", i) for i in range(self.per_batch)])
            self.sent += self.per_batch
        await asyncio.Event().wait()


async def test_a_poller_past_the_marks_headroom_waits_for_the_paced_fsync_not_its_own(
    tmp_path: Path,
) -> None:
    """ADR 0032: the journal is fsynced at most once per ``journal_ms``. A poller whose
    reads pass the mark's headroom, back to back, waits before its read for the next paced
    fsync; it used to force one of its own each time (~600 fsyncs/s on bench modbus's
    gateway where the interval allows 100), and every extra fsync cost the agent's core."""
    cfg = _hour_long_windows(tmp_path, journal_ms=50)
    source = PollingBurst(batches=60, per_batch=500)
    runtime = build_runtime(cfg, SoftwareSigner.generate(), [source])
    syncs: list[float] = []
    real_sync = runtime.spool.sync_journal

    def counted_sync() -> None:
        syncs.append(time.monotonic())
        real_sync()

    runtime.spool.sync_journal = counted_sync  # type: ignore[method-assign]  # counts the fsyncs
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await until(lambda: source.sent == 60 * 500, what="every batch emitted")
    finally:
        stop.set()
        await task
    assert runtime.counters.readings_committed == 60 * 500
    gaps = [b - a for a, b in itertools.pairwise(syncs)]
    # paced: one fsync an interval; a gap shorter than it needs a thread to start one sync
    # 40 ms later than the next (one such outlier allowed on a loaded machine)
    assert len(syncs) >= 2
    assert sum(g < 0.01 for g in gaps) <= 1, sorted(gaps)[:5]


async def test_a_sync_asked_for_after_the_journal_ended_stops_its_caller_not_the_agent(
    tmp_path: Path,
) -> None:
    """The hub-head task between its journal write and its sync when the stop came: the
    journal's loops had ended and shut their sync pool, and the sync raised RuntimeError
    ('cannot schedule new futures after shutdown'), which the agent's task group reported as
    a crash (CI, 2026-12-06). Now it ends that caller as cancelled, as the mark's own wait
    already did."""
    _, source, runtime = _bursting(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await until(lambda: source.sent >= 1, what="the agent running")
    stop.set()
    await task  # the journal's loops end with the stop; its sync pool is shut down
    runtime._unsynced.set()
    with pytest.raises(asyncio.CancelledError):
        await runtime._sync_journal()
