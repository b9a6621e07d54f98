"""The agent supervisor: connectors -> window builder -> scorer -> signer -> spool -> uplink.

One event loop, one TaskGroup, every task named. Queues are bounded: connectors wait
(backpressure) rather than buffer without limit; signing and SQLite run off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.connectors.base import (
    Connector,
    Emit,
    NeedsCommit,
    NeedsExpect,
    NeedsJournaled,
    Sample,
    SourceGap,
)
from agent.connectors.registry import build_connectors
from agent.errors import ConfigError, SpoolError
from agent.health import STATUS_FILE, STATUS_VERSION, HealthLimits, health_line, problems
from agent.logwatch import LogWatch
from agent.metrics import AgentMetrics, MetricsServer
from agent.notify import notify
from agent.ports import Ports, default_ports
from agent.recover import continue_fresh_spool
from agent.scoring import Reloadable, Scorer
from agent.sealer import SealedWindow, seal
from agent.spool import JournalPolicy, ShedPolicy, Spool
from agent.uplink import Uplink
from agent.window import ClosedWindow, WindowBuilder, merge_windows, runs
from attestation.cancel import reraise_if_cancelling
from attestation.errors import Fixable
from attestation.microproof import Gap
from attestation.policy import ShedPolicyStatement, sign_policy
from attestation.signers.base import Signer, SignerUnavailable
from attestation.utid import utid_bytes, utid_text

__all__ = ["AgentCounters", "AgentRuntime", "build_runtime"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _JournalMark:
    """A ``journaled()`` waiter in the queue: done once every earlier sample is durable."""

    done: asyncio.Future[None]


_Item = list[Sample] | tuple[SourceGap, ...] | asyncio.Future[None] | _JournalMark
HEAD_TIMEOUT_S = 3.0  # a fresh spool asks the hub for its chain head at most this long
STOPPED_UNCOMMITTED = "agent stopped before these readings were committed (disk full)"


@dataclass
class AgentCounters:
    readings_acquired: int = 0
    readings_committed: int = 0
    windows_signed: int = 0
    gap_records: int = 0
    backpressure_waits: int = 0
    disk_full_retries: int = 0  # window commits retried because the disk was full
    signer_retries: int = 0  # seals retried because the signer (a TPM) did not answer
    model_swaps: int = 0
    model_swap_failures: int = 0
    last_sign_s: float = 0.0
    anomalous_rows: int = 0  # rows whose smoothed model score passed the threshold
    last_max_score: float = 0.0


def _nothing() -> None:
    """A no-op for an executor: awaiting it waits for the work queued before it."""


class UpdateTask(Protocol):
    """The signed-update client (``agent.update_loop.UpdateLoop``): one task of the agent."""

    async def run(self) -> None: ...

    def status(self) -> dict[str, Any] | None: ...


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def build_runtime(
    config: AgentConfig,
    signer: Signer,
    connectors: Sequence[Connector] | None = None,
    **options: Any,
) -> AgentRuntime:
    """A runtime with the ports ``config`` asks for (``default_ports``) and, unless given,
    the connectors it names; ``options`` are ``AgentRuntime``'s other fields."""
    metrics = options.pop("metrics", None) or AgentMetrics()
    ports = default_ports(config, signer, metrics)
    if connectors is None:
        connectors = build_connectors(config)
    return AgentRuntime(config, signer, connectors, ports, metrics=metrics, **options)


@dataclass
class AgentRuntime:
    """Runs until ``stop`` is set; then seals what is open and tries one last upload."""

    config: AgentConfig
    signer: Signer
    connectors: Sequence[Connector]
    ports: Ports  # spool, uplink, log watch: built outside (``build_runtime``, ``default_ports``)
    scorer: Scorer | None = None
    clock: Callable[[], int] = time.time_ns
    # a window's age: monotonic, so a wall-clock step (NTP, a bad RTC) neither holds a window
    # open for the length of a backward jump nor closes every window at once after a forward one
    ticks: Callable[[], int] = time.monotonic_ns
    queue_batches: int = 256  # connector batches buffered before connectors wait
    counters: AgentCounters = field(default_factory=AgentCounters)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    # a full disk holds acquisition up (backpressure): retry often, so room that comes back
    # is used within 2 s (a failed SQLite write costs next to nothing); was 10 s
    disk_full_backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.2, cap_s=2.0))
    signer_backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.2, cap_s=2.0))
    stop_grace_s: float = 30.0  # how long a stop waits for a full disk before giving up
    connector_stop_s: float = 5.0  # how long a stop waits for connectors before sealing
    restart_backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, cap_s=30.0))
    restart_limit: int | None = None  # restarts in a row before a failing connector is left off
    connector_failures: dict[str, str] = field(default_factory=dict)
    model_reload_s: float = 5.0  # how often the model manifest is checked for a new version
    model_error: str | None = None  # why the last model swap was refused
    health_limits: HealthLimits = field(default_factory=HealthLimits)
    updates: UpdateTask | None = None  # [updates]: checks the hub for models and settings
    head_timeout_s: float = HEAD_TIMEOUT_S  # a fresh spool's chain-head lookup, at most

    @property
    def spool(self) -> Spool:
        return self.ports.spool

    @property
    def uplink(self) -> Uplink | None:
        return self.ports.uplink

    @property
    def logwatch(self) -> LogWatch | None:
        return self.ports.logwatch

    def __post_init__(self) -> None:
        cfg = self.config
        self._sign_pool = ThreadPoolExecutor(1, thread_name_prefix="signer")
        # the journal has its own thread and connection: a batch never waits behind an
        # upload's reads or a window commit on the spool thread (ADR 0017)
        self._journal_pool = ThreadPoolExecutor(1, thread_name_prefix="journal")
        # and its fsyncs one more, so a slow disk never holds up a journal write (ADR 0032)
        self._sync_pool = ThreadPoolExecutor(1, thread_name_prefix="journal-sync")
        recovery = self.spool.recovery(cfg.window.max_readings)
        self.builder = WindowBuilder(
            cfg.window.max_readings, cfg.window.max_ms, next_seq=recovery.first_free_seq
        )
        # what the last stop left: journaled readings are sealed first, and the seqs lost
        # before this start become gap records on the window that follows them
        self._closed: list[ClosedWindow] = list(recovery.windows)
        self._closed_readings = sum(len(w.readings) for w in recovery.windows)
        self.builder.gaps = list(recovery.gaps)
        if recovery.record is not None:
            log.warning(
                "spool: recovery %d: %d readings back from the journal (last seq %s)",
                recovery.record.recoveries,
                self._closed_readings,
                recovery.record.last_journaled,
            )
            if not recovery.windows:
                self.builder.recovery = recovery.record
        for gap in self.spool.recovered_gaps:
            log.warning("spool: %s", gap)
        self.journal_policy = JournalPolicy(cfg.spool.journal_ms)
        self._mark = recovery.first_free_seq  # seqs below it may be handed out (synced)
        self._written_mark = self._mark  # the mark the journal's last write holds
        self._writing: int | None = None  # the mark of a journal write in flight
        self._since_sync = 0  # readings written since the last sync began
        self._sync_batch = 0  # readings the last sync covered
        self._sync_lock = asyncio.Lock()
        self._unsynced = asyncio.Event()  # the journal wrote something not fsynced yet
        self._burst = 0  # the largest batch a connector has emitted
        self._promised = 0  # samples emitted, not numbered yet: the mark covers them too
        # samples a connector said its read in flight will yield (``NeedsExpect``): covered
        # by the mark before the request goes out, so a kill that lands while the answer is
        # on its way states it lost
        self._expected: dict[str, int] = {}
        self._journal_lock = asyncio.Lock()
        self._seal_lock = asyncio.Lock()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (seq target, marker)
        # ``journaled()`` markers: done once the journal (or a commit) holds their seqs
        self._journal_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # seqs below the first one this run hands out are committed or owned by gap records
        self._committed_next = self.builder.next_seq
        # numbering waits for the chain's start: a fresh spool with a hub asks for the hub's
        # head in the background while connectors acquire into the bounded queue (ADR 0027)
        self._numbering = asyncio.Event()
        self._stopping = False  # the ordered stop has begun (the journal's tasks end)
        self._journaled_next = self.builder.next_seq  # every reading below it is durable
        self._rng = random.Random()
        self.metrics.watch_connectors(lambda: self.connectors)
        self.metrics_server: MetricsServer | None = None
        self.utid = utid_text(utid_bytes(self.signer.public_key_der()))
        self.status_path = cfg.spool.path.with_name(STATUS_FILE)
        self._started_ns = self.clock()
        self._last_reading_ns: dict[str, int] = {}
        self._readings_by: dict[str, int] = {}

    async def _spool_call(self, fn: Callable[[], T]) -> T:
        return await self.ports.spool_thread.call(fn)

    @property
    def head_pending(self) -> bool:
        """A fresh spool's chain-head lookup is still running: nothing is numbered yet."""
        return not self._numbering.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        ask_head = bool(self.config.hub.url) and self.spool.is_fresh()
        if not ask_head:
            self._numbering.set()
        await self._start()
        try:
            async with asyncio.TaskGroup() as tg:
                acquiring = [
                    tg.create_task(self._supervise(c), name=f"connector[{c.name}]")
                    for c in self.connectors
                ]
                feeding = [
                    tg.create_task(self._collect(), name="collector"),
                    tg.create_task(self._journal_loop(), name="journal"),
                ]
                head = tg.create_task(self._continue_hub_chain(), name="hub-head")
                background = [
                    tg.create_task(self._seal_loop(), name="sealer"),
                    tg.create_task(self._watch_model(), name="model-watch"),
                    tg.create_task(self._report_health(), name="health"),
                ]
                if self.logwatch is not None:
                    background.append(tg.create_task(self.logwatch.run(), name="logwatch"))
                if self.updates is not None:
                    background.append(tg.create_task(self.updates.run(), name="updates"))
                uplink = tg.create_task(self.uplink.run(), name="uplink") if self.uplink else None
                notify("READY=1")  # systemd Type=notify: started, SIGTERM now stops cleanly
                await stop.wait()
                notify("STOPPING=1")
                await self._stop(acquiring, feeding, head, background, uplink)
        finally:
            await self._close()

    async def _start(self) -> None:
        """The loop's own objects, the signed storage policy, the metrics server."""
        # batches of samples, source gaps (a tuple), and commit markers (see ``committed``)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(self.queue_batches)
        self._room = asyncio.Event()
        self._room.set()
        self._work = asyncio.Event()
        if self._closed:  # recovered from the journal: sealed before anything new
            self._work.set()
        self._journal_wake = asyncio.Event()
        self._synced = asyncio.Event()  # set (and replaced) by each fsync of the journal
        self._journal_gone = False  # the journal's loops ended (the agent is stopping)
        if self.uplink is not None:
            # state the storage policy once per start, signed like the proofs (off the loop:
            # a TPM takes ~200 ms a signature)
            statement = ShedPolicyStatement(
                self.config.spool.disk_cap_bytes, ShedPolicy().low_water
            )
            self.uplink.policy = await asyncio.get_running_loop().run_in_executor(
                self._sign_pool,
                lambda: sign_policy(statement, self.signer, iat=self.clock() // 1_000_000_000),
            )
        if self.config.metrics_port is not None:
            self.metrics_server = MetricsServer.serve(
                self.metrics, self.config.metrics_host, self.config.metrics_port
            )
        log.info("%s", self.startup_line())

    async def _stop(
        self,
        acquiring: list[asyncio.Task[None]],
        feeding: list[asyncio.Task[None]],
        head: asyncio.Task[None],
        background: list[asyncio.Task[None]],
        uplink: asyncio.Task[None] | None,
    ) -> None:
        """The ordered stop: connectors, then numbering, sealing, and one last upload."""
        self._stopping = True
        for task in (*acquiring, *feeding):
            task.cancel()
        await self._connectors_stopped(acquiring)
        await asyncio.gather(*feeding, return_exceptions=True)
        # a journal batch the cancel interrupted still runs on its thread: let it land first,
        # or its seq mark lands after the stop's release (and, at close, on a closed
        # connection: SQLite crashed so once under load)
        await asyncio.get_running_loop().run_in_executor(self._journal_pool, _nothing)
        # bounded by head_timeout_s: what was acquired is numbered on the chain the hub
        # holds, never at genesis because the stop came first
        await asyncio.gather(head, return_exceptions=True)
        await self._seal_on_stop()
        for gap in self.builder.unstated_source_gaps():  # no window left to sign them
            log.warning("stopping with a source gap no window could state: %s", gap)
        # never committed (or journaled): their sources must not ack
        for _, fut in (*self._waiters, *self._journal_waiters):
            fut.cancel()
        for task in background:
            task.cancel()
        if uplink is not None and self.uplink is not None:
            uplink.cancel()
            # its own clean-up (a send it was in marks its proofs failed) first
            await asyncio.gather(uplink, return_exceptions=True)
            try:
                async with asyncio.timeout(10):
                    await self.uplink.drain()
            except TimeoutError:  # they stay queued: the next start sends them
                log.warning("uplink: shutdown upload stopped after 10 s")

    async def _close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
        with contextlib.suppress(OSError, SpoolError):  # the status is a courtesy
            await self._write_status(stopped=True)
        # a journal batch whose caller was cancelled may still be writing on its thread: it
        # ends before the connections close (closing one in use crashes SQLite's caller)
        await asyncio.to_thread(self._journal_pool.shutdown)
        await self._spool_call(self.spool.close)
        self.ports.spool_thread.shutdown()
        self._sign_pool.shutdown()

    async def _continue_hub_chain(self) -> None:
        """A fresh spool with a hub: continue the hub's chain of this device, if it holds
        one, before anything is numbered (ADR 0027). Runs beside acquisition: connectors
        read at once and their samples wait in the bounded queue; an unreachable hub costs
        at most ``head_timeout_s`` once, then the chain starts at genesis as before."""
        cfg = self.config
        if self._numbering.is_set() or cfg.hub.url is None:
            return  # not a fresh spool, or no hub: numbered from the spool's state at once
        try:
            head = await continue_fresh_spool(
                self.spool,
                cfg.hub.url,
                self.signer,
                min(cfg.hub.timeout_s, self.head_timeout_s),
                run=self._spool_call,
            )
            if head is not None:
                first = head.last_seq + 1
                self.builder.next_seq = self._mark = self._committed_next = first
                self._written_mark = first
        finally:
            self._numbering.set()
        if self._stopping:
            return  # the stop seals and commits what was acquired; the journal has ended
        # the synced seq mark covers what was acquired while waiting (ADR 0017, 0032)
        await self._raise_mark(in_hand=True)
        self._journal_wake.set()

    async def _seal_on_stop(self) -> None:
        """Number, seal and commit what is left; if the disk stays full, say which seqs were
        lost and why."""
        try:
            async with asyncio.timeout(self.stop_grace_s):
                self._drain_queue()
                self._take(self.builder.flush())
                await self._seal_pending()
        except TimeoutError:
            # the spool thread runs one call at a time: this sees every write that landed; the
            # journaled readings are sealed at the next start, the rest are lost
            st = await self._spool_call(self.spool.state)
            first = max(st.next_seq, st.journal_next)
            end = self.builder.next_seq
            lost = [Gap(first, end - 1, STOPPED_UNCOMMITTED)] if end > first else []
            log.error("stopping with %s", lost or "the rest journaled")  # noqa: TRY400 - a fact
            with contextlib.suppress(SpoolError):  # if even this fails, a restart reports it
                await self._spool_call(lambda: self.spool.release(end, lost))
            return
        # everything acquired is committed; gap records no window has signed yet (a restart's,
        # when nothing new came since) stay owed to the next start's first window
        owed = list(self.builder.gaps)
        await self._spool_call(lambda: self.spool.release(self.builder.next_seq, owed))

    async def _supervise(self, connector: Connector) -> None:
        """Run one connector; if it fails, restart it alone after a backoff.

        A connector handles its own peer's failures (reconnects); what reaches here is a
        bug or a configuration error. A ``ConfigError`` stops that connector for good (a
        restart cannot fix it); anything else restarts it, up to ``restart_limit`` times in
        a row. The other connectors, and the agent, keep running either way.
        """
        name = connector.name
        if isinstance(connector, NeedsCommit):
            connector.bind_committed(self.committed)
        if isinstance(connector, NeedsExpect):
            connector.bind_expect(lambda n: self._expect(name, n))
        if isinstance(connector, NeedsJournaled):
            connector.bind_journaled(self.journaled)
        try:
            await self._run_supervised(connector)
        finally:  # a connector left off expects nothing more
            self._promised -= self._expected.pop(name, 0)

    async def _run_supervised(self, connector: Connector) -> None:
        name = connector.name
        up = self.metrics.connector_up.labels(name)
        attempt = 0
        while True:
            up.set(1)
            started = time.monotonic()
            try:
                await connector.run(self._emitter(name))
                reason = "returned"
            except ConfigError as err:
                up.set(0)
                self.connector_failures[name] = f"stopped: {err}"
                log.error("connector %s stopped: %s (hint: %s)", name, err, err.hint)  # noqa: TRY400 - a refusal, not a crash: no traceback
                return
            except Exception as err:  # a bug in one connector must not stop the rest
                reason = f"{type(err).__name__}: {err}"
                log.exception("connector %s failed", name)
            up.set(0)
            reraise_if_cancelling()  # stopped: a library swallowed it, never restart then
            self.metrics.connector_restarts.labels(name).inc()
            if time.monotonic() - started > self.restart_backoff.cap_s * 2:
                attempt = 0  # it ran fine for a while: start the backoff over
            if self.restart_limit is not None and attempt >= self.restart_limit:
                self.connector_failures[name] = f"gave up after {attempt} restarts: {reason}"
                log.error("connector %s: giving up after %d restarts", name, attempt)
                return
            self.connector_failures[name] = f"restarting after: {reason}"
            delay = self.restart_backoff.delay(attempt, self._rng)
            attempt += 1
            await asyncio.sleep(delay)

    async def _watch_model(self) -> None:
        """Swap in a new model when its manifest file changes (write it last, by rename).

        The swap is atomic: a model whose hash or manifest does not verify is refused with
        the reason logged and counted, and the previous model keeps scoring.
        """
        path, scorer = self.config.model_manifest, cast(object, self.scorer)
        if path is None or not isinstance(scorer, Reloadable):
            return
        seen = _fingerprint(path)
        while True:
            await asyncio.sleep(self.model_reload_s)
            now = _fingerprint(path)
            if now == seen:
                continue
            seen = now
            try:
                await asyncio.to_thread(scorer.swap, path)
            except Fixable as err:
                self.counters.model_swap_failures += 1
                self.model_error = f"{err} (hint: {err.hint})"
                log.error("model %s refused, the previous model keeps running: %s", path, err)  # noqa: TRY400 - a refused model is an answer, not a crash
            else:
                self.counters.model_swaps += 1
                self.model_error = None
                log.info("model swapped in from %s", path)

    def _emitter(self, connector: str) -> Emit:
        readings = self.metrics.readings.labels(connector)

        async def emit(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
            """What a connector calls: waits while the signer is behind by too many readings."""
            if samples:
                self._last_reading_ns[connector] = samples[-1].ts_ns
                self._readings_by[connector] = self._readings_by.get(connector, 0) + len(samples)
            if not self._room.is_set():
                self.counters.backpressure_waits += 1
                await self._room.wait()
            if gaps:
                await self._queue.put(tuple(gaps))
            if samples:
                # what the read in flight was expected to yield is covered already
                covered = min(self._expected.get(connector, 0), len(samples))
                if covered:
                    self._expected[connector] -= covered
                try:
                    await self._promise(len(samples) - covered, len(samples))
                except BaseException:
                    self._promised -= covered  # they never entered the runtime
                    raise
                try:
                    await self._queue.put(samples)
                except BaseException:
                    self._promised -= len(samples)
                    raise
                readings.inc(len(samples))

        return emit

    async def committed(self) -> None:
        """Return once everything emitted before this call is committed in the spool."""
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(marker)
        await marker

    async def journaled(self) -> None:
        """Return once everything emitted before this call is durable in the spool: in the
        journal (fsynced, sealed at the next start after a kill) or in a committed window.
        What a source that can deliver again (an MQTT broker) waits for before its ack."""
        mark = _JournalMark(asyncio.get_running_loop().create_future())
        await self._queue.put(mark)
        await mark.done

    def _release_waiters(self) -> None:
        self._waiters = _release(self._waiters, self._committed_next)
        durable = max(self._committed_next, self._journaled_next)
        self._journal_waiters = _release(self._journal_waiters, durable)

    async def _connectors_stopped(self, acquiring: Sequence[asyncio.Task[None]]) -> None:
        """Wait for the cancelled connectors, at most ``connector_stop_s``: one whose library
        swallowed the cancellation must not keep the agent from sealing and uploading what
        it already has (the process then waits for it, and systemd's stop timeout ends it)."""
        if not acquiring:
            return
        _, stuck = await asyncio.wait(acquiring, timeout=self.connector_stop_s)
        for task in stuck:
            log.error(
                "%s did not stop within %.1f s of being cancelled (its library swallowed the"
                " cancellation?); sealing and uploading without it",
                task.get_name(),
                self.connector_stop_s,
            )

    def _drain_queue(self) -> None:
        while not self._queue.empty():
            self._add(self._queue.get_nowait())

    def _add(self, item: _Item) -> None:
        if isinstance(item, tuple):  # source gaps: the next window to close states them
            self.builder.note(item)
            return
        if isinstance(item, asyncio.Future):
            # a commit marker: done once the spool holds every seq handed out so far; the
            # open window is closed now so the waiter does not wait for it to age
            self._waiters.append((self.builder.next_seq, item))
            self._take(self.builder.flush())
            self._release_waiters()
            return
        if isinstance(item, _JournalMark):  # the next journal batch (or commit) releases it
            self._journal_waiters.append((self.builder.next_seq, item.done))
            self._release_waiters()
            self._journal_wake.set()
            return
        samples = item
        self._promised -= len(samples)
        self.counters.readings_acquired += len(samples)
        self._take(self.builder.add(samples, self.ticks()))
        self._journal_wake.set()

    async def _expect(self, connector: str, n: int) -> None:
        """``connector`` is about to read up to ``n`` samples (this replaces what it expected
        before): the durable mark covers them before the request goes out."""
        old = self._expected.get(connector, 0)
        self._expected[connector] = n
        self._promised += n - old
        try:
            if self._over_mark():
                await self._raise_mark(in_hand=False)
        except BaseException:
            self._expected[connector] = old
            self._promised -= n - old
            raise

    async def _promise(self, n: int, burst: int = 0) -> None:
        """Before ``n`` samples enter the runtime, the durable seq mark covers them (a kill
        then states them lost if they never reach the journal); waits only for an early
        journal batch when the mark's headroom is used up (ADR 0017). With ``n`` 0 (every
        sample covered before its read, ``_expect``) nothing waits: what others promised
        since is theirs to cover, and samples in hand that wait are what a kill loses."""
        self._burst = max(self._burst, burst or n)
        if not n:
            return
        self._promised += n
        try:
            if self._over_mark():
                await self._raise_mark(in_hand=True)
        except BaseException:
            self._promised -= n
            raise

    def _over_mark(self) -> bool:
        """The promised samples pass the durable mark: an early journal batch must move it.
        Before numbering starts (the hub's head is being asked) nothing is journaled: the
        spool must stay fresh to continue the hub's chain."""
        return self._numbering.is_set() and self.builder.next_seq + self._promised > self._mark

    async def _raise_mark(self, *, in_hand: bool) -> None:
        """The mark's headroom is used up: write a new mark now and wait until it is synced
        (only a synced mark may be numbered below: ADR 0032).

        Before a read (``in_hand`` False) the wait is for the sync loop's next fsync, at
        most one ``interval_ms`` away: under a steady load the headroom runs out several
        times an interval, and an fsync of its own each time cost the agent's one core more
        than the wait (bench modbus end to end), while a read not yet made loses nothing
        to a kill. Samples already read (``in_hand``) get an fsync at once: every
        millisecond they wait unjournaled is one a kill takes them in."""
        target = self.builder.next_seq + self._promised  # ours and every promise before it
        while self._numbering.is_set() and self._mark < target:
            if self._journal_gone:
                # the agent is stopping and the journal took its last batch: this read can
                # never be numbered (its connector was cancelled; a library that swallowed
                # that lands here instead of in a pool that is shut down)
                raise asyncio.CancelledError
            synced = self._synced
            # a mark over every sample promised now (others may promise while this waits)
            await self._journal()
            if in_hand:
                await self._sync_journal()
            elif self._mark < target:
                await synced.wait()

    async def _journal_loop(self) -> None:
        """Write the numbered readings to the journal at once (a batch at most every
        ``write_ms``): a kill -9 loses only what was numbered since the last write. The
        writes are synced to the disk by ``_sync_loop`` (ADR 0017, 0032)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._sync_loop(), name="journal-sync")
                tg.create_task(self._write_loop(), name="journal-write")
        finally:
            self._journal_gone = True  # no more syncs: whoever waits for one stops waiting
            self._synced.set()
            self._sync_pool.shutdown(wait=False)

    async def _write_loop(self) -> None:
        policy = self.journal_policy
        await self._numbering.wait()
        while True:
            if not self.builder.unjournaled:
                # with nothing new for ``idle_ms`` the mark comes back to the next seq: an
                # idle agent killed states no loss
                ahead = self._written_mark > self.builder.next_seq + self._promised
                try:
                    async with asyncio.timeout(policy.idle_ms / 1000 if ahead else None):
                        await self._journal_wake.wait()
                except TimeoutError:
                    await self._journal(idle=True)
                    continue
            self._journal_wake.clear()
            started = time.monotonic()
            await self._journal()
            await asyncio.sleep(max(0.0, policy.write_ms / 1000 - time.monotonic() + started))

    async def _sync_loop(self) -> None:
        """fsync what the journal wrote, at most once per ``interval_ms``: a power cut loses
        at most that, and the synced mark says so (ADR 0032)."""
        interval = self.journal_policy.interval_ms / 1000
        while True:
            await self._unsynced.wait()
            started = time.monotonic()
            await self._sync_journal()
            await asyncio.sleep(max(0.0, interval - time.monotonic() + started))

    async def _sync_journal(self) -> None:
        """One fsync of the journal's writes; then numbering may go up to the mark they hold.
        Runs beside the writes (never holding SQLite's lock), so a slow disk delays only
        how far ahead numbering may run, never a write."""
        async with self._sync_lock:
            if self._journal_gone:
                # the agent is stopping and the journal's loops ended, its sync pool shut
                # down with them: a caller that was between its write and this sync when the
                # stop came (the hub-head task, seen in CI: "cannot schedule new futures
                # after shutdown") stops here; the stop seals and commits what was acquired
                raise asyncio.CancelledError
            if not self._unsynced.is_set():
                return
            self._unsynced.clear()
            written = self._written_mark  # the last write has returned: the file holds it
            self._sync_batch, self._since_sync = self._since_sync, 0
            try:
                await self._retrying_disk_full(self.spool.sync_journal, self._sync_pool)
            except BaseException:
                self._unsynced.set()
                raise
            # an idle write may have lowered the mark meanwhile: number below every one
            self._mark = min(written, self._written_mark, self._writing or written)
            self._synced.set()  # whoever waits for this sync: it happened
            self._synced = asyncio.Event()

    async def _journal(self, *, idle: bool = False) -> None:
        """One journal write: the readings numbered since the last, and a new seq mark that
        covers every sample promised and the next batch's (``idle``: none). Numbering goes
        up to the new mark only once it is synced (``_sync_journal``)."""
        async with self._journal_lock:
            batch = self.builder.take_unjournaled()
            numbered = self.builder.next_seq  # every reading below it is in batch or durable
            upto = self.builder.next_seq + self._promised
            self._since_sync += len(batch)
            ahead = max(len(batch), self._sync_batch)  # one sync's worth of readings
            mark = upto if idle else self.journal_policy.mark(upto, ahead, self._burst)
            if not batch and (
                mark == self._written_mark or (not idle and mark < self._written_mark)
            ):
                self._journaled_next = max(self._journaled_next, numbered)  # nothing new
                self._release_waiters()
                return
            # while the write is in flight the mark on disk is either one: number below both
            self._mark = min(self._mark, mark)
            self._writing = mark
            try:
                await self._retrying_disk_full(
                    lambda: self.spool.journal(batch, mark), self._journal_pool
                )
            except BaseException:
                # not journaled (or not known to be): the next batch takes them again, and a
                # window commit writes whatever the journal has not
                self.builder.unjournaled[:0] = batch
                raise
            finally:
                self._writing = None
            self._written_mark = mark
            self._unsynced.set()
            # written is what a kill -9 cannot take (ADR 0032): MQTT acks may go now
            self._journaled_next = max(self._journaled_next, numbered)
            self._release_waiters()

    def _take(self, closed: list[ClosedWindow]) -> None:
        if not closed:
            return
        self._closed.extend(closed)
        self._closed_readings += sum(len(w.readings) for w in closed)
        if self._closed_readings >= self.config.window.max_pending_readings:
            self._room.clear()
        self._work.set()

    async def _collect(self) -> None:
        await self._numbering.wait()  # samples wait in the queue until their seqs are known
        while True:
            try:
                async with asyncio.timeout(0.05):  # not wait_for: see uplink.py
                    item = await self._queue.get()
            except TimeoutError:
                self._take(self.builder.tick(self.ticks()))
                continue
            self._add(item)

    async def _seal_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            await self._seal_pending()

    async def _seal_pending(self) -> None:
        """Sign everything closed so far as ONE window: a slow signer makes windows grow.

        Gap records start a new proof, so closed windows are signed run by run
        (``runs``); without gaps that is a single run.
        """
        async with self._seal_lock:
            if not self._closed:
                return
            batches = runs(self._closed)
            self._closed, self._closed_readings = [], 0
            self._room.set()
            for batch in batches:
                await self._seal_one(merge_windows(batch))
            await self._spool_call(lambda: self.spool.shed(self.config.spool.disk_cap_bytes))
            self._observe_spool()
            if self.uplink is not None:
                self.uplink.wake.set()

    async def _seal_one(self, window: ClosedWindow) -> None:
        loop = asyncio.get_running_loop()
        scores = None
        if self.scorer is not None:
            scores = await loop.run_in_executor(
                self._sign_pool, self.scorer.score_window, window.readings
            )
        st = await self._spool_call(self.spool.state)
        reset = await self._spool_call(self.spool.pending_reset)  # key 18 (ADR 0027)
        started = time.monotonic()
        sealed = await self._retrying_signer(
            lambda: seal(
                window,
                index=st.next_window,
                prev=st.prev_hash,
                signer=self.signer,
                iat=self.clock() // 1_000_000_000,
                scores=scores,
                reset=reset,
            )
        )
        self.counters.last_sign_s = time.monotonic() - started
        self.metrics.sign_seconds.observe(self.counters.last_sign_s)
        # a full disk keeps the signed window in memory and retries the same bytes
        await self._retrying_disk_full(lambda: self.spool.commit(sealed, now_ns=self.clock()))
        self._committed_next = max(self._committed_next, window.readings[-1].seq + 1)
        self._release_waiters()
        self.counters.windows_signed += 1
        self.counters.readings_committed += len(window.readings)
        self.counters.gap_records += len(window.gaps)
        self.metrics.windows_signed.inc()
        self.metrics.gap_records.inc(len(window.gaps))
        if scores is not None:
            self.counters.anomalous_rows += scores.anomaly.count
            self.counters.last_max_score = scores.anomaly.max_score

    async def _retrying_signer(self, sign: Callable[[], SealedWindow]) -> SealedWindow:
        """Seal on the signer's thread; while the key's holder does not answer (a TPM being
        reset, its link cut: ``SignerUnavailable``) keep the window and try again with a
        growing delay. Acquisition goes on meanwhile: readings are journaled and later
        windows wait in ``_closed`` (backpressure only past ``max_pending_readings``)."""
        attempt = 0
        while True:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._sign_pool, sign)
            except SignerUnavailable as err:
                self.counters.signer_retries += 1
                delay = self.signer_backoff.delay(attempt, self._rng)
                attempt += 1
                log.error(  # noqa: TRY400 - a fact; the traceback would say nothing more
                    "signer unavailable (%s); the window waits, retrying in %.1f s", err, delay
                )
                await asyncio.sleep(delay)

    async def _retrying_disk_full(
        self, write: Callable[[], T], pool: ThreadPoolExecutor | None = None
    ) -> T:
        """Run a spool write (on ``pool``, by default the spool's thread); while the disk is
        full, shed synced readings and try again.

        Nothing is lost while waiting: the caller holds the data, and acquisition slows
        down by backpressure once ``max_pending_readings`` are waiting.
        """
        attempt = 0
        while True:
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    pool or self.ports.spool_thread.executor, write
                )
            except SpoolError as err:
                if not err.disk_full:
                    raise
            self.counters.disk_full_retries += 1
            self.metrics.spool_retries.inc()
            # free pages inside the file are reused by SQLite: shedding makes room
            # (the delete itself may fail on a full disk; the next round tries again)
            with contextlib.suppress(SpoolError):
                await self._spool_call(lambda: self.spool.shed(0))
            delay = self.disk_full_backoff.delay(attempt, self._rng)
            attempt += 1
            log.error("spool: disk full; retrying in %.1f s (nothing is lost)", delay)
            await asyncio.sleep(delay)

    def _observe_spool(self) -> None:
        m = self.metrics
        m.queue_depth.set(self._queue.qsize())
        m.pending_readings.set(self._closed_readings)
        m.spool_bytes.set(self.spool.used_bytes())
        m.set_outbox(self.spool.counts())
        if self.uplink is not None:
            m.uplink_stopped.set(1 if self.uplink.stats.stopped else 0)
        if self.logwatch is not None:
            m.hub_log_fork.set(1 if self.logwatch.fork else 0)

    def startup_line(self) -> str:
        """One INFO line at start: who this is, what it reads, where it writes and sends."""
        cfg = self.config
        kinds: dict[str, int] = {}
        for c in self.connectors:
            kind = c.name.split("[", 1)[0] if "[" in c.name else type(c).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
        model = self._model_doc()
        return (
            f"agent {cfg.device.name} starting: {self.utid}, signer {self.signer.kind}, "
            f"connectors {', '.join(f'{k} x{n}' for k, n in sorted(kinds.items())) or 'none'}, "
            f"spool {cfg.spool.path} (cap {cfg.spool.disk_cap_bytes:,} bytes), "
            f"hub {cfg.hub.url or 'none (offline)'}, "
            f"model {model['id'] + ' ' + model['sha256'][:12] if model else 'none'}, "
            f"status file {self.status_path}"
        )

    def _model_doc(self) -> dict[str, Any] | None:
        manifest = getattr(getattr(self.scorer, "model", None), "manifest", None)
        if manifest is None:
            return None
        return {
            "id": manifest.id,
            "sha256": manifest.sha256,
            "version": manifest.version,
            "fleet_version": manifest.fleet_version,  # set when a TUF fleet update runs
            "error": self.model_error,
        }

    def status_document(
        self, now_ns: int, spool_bytes: int, outbox: dict[str, int], disk_free: int
    ) -> dict[str, Any]:
        """What ``factoryops agent status`` shows (agent/health.py reads it)."""
        cfg, up = self.config, self.uplink.stats if self.uplink else None
        return {
            "version": STATUS_VERSION,
            "pid": os.getpid(),
            "started_ns": self._started_ns,
            "written_ns": now_ns,
            "status_interval_s": cfg.log.status_interval_s,
            "device": {
                "name": cfg.device.name,
                "utid": self.utid,
                "signer": self.signer.kind,
                "tcti": cfg.device.tcti if self.signer.kind == "tpm" else None,
            },
            "connectors": [
                {
                    "name": c.name,
                    "peer_up": getattr(c, "peer_up", None),
                    "last_reading_ns": self._last_reading_ns.get(c.name),
                    "readings": self._readings_by.get(c.name, 0),
                    "errors": sum(getattr(c, "errors", {}).values()),
                    "failure": self.connector_failures.get(c.name),
                }
                for c in self.connectors
            ],
            "spool": {
                "path": str(cfg.spool.path),
                "bytes": spool_bytes,
                "disk_cap_bytes": cfg.spool.disk_cap_bytes,
                "disk_free_bytes": disk_free,
                "backlog_windows": outbox.get("pending", 0) + outbox.get("sent", 0),
                "outbox": outbox,
            },
            "windows_signed": self.counters.windows_signed,
            "readings_committed": self.counters.readings_committed,
            "gap_records": self.counters.gap_records,
            "last_sign_s": self.counters.last_sign_s,
            "uplink": None
            if up is None
            else {
                "url": cfg.hub.url,
                "synced_windows": up.synced_windows,
                "failures": up.failures,
                "last_sync_ns": up.last_sync_ns,
                "last_error": up.last_error,
                "last_error_ns": up.last_error_ns,
                "stopped": up.stopped,
                "stopped_code": up.stopped_code,
            },
            "model": self._model_doc(),
            "updates": self.updates.status() if self.updates else None,
        }

    async def _write_status(self, *, stopped: bool = False) -> dict[str, Any]:
        def gather() -> tuple[int, dict[str, int], int]:
            free = shutil.disk_usage(self.config.spool.path.parent).free
            return self.spool.used_bytes(), self.spool.counts(), free

        spool_bytes, outbox, free = await self._spool_call(gather)
        doc = self.status_document(self.clock(), spool_bytes, outbox, free)
        if stopped:
            doc["stopped_ns"] = doc["written_ns"]
        data = json.dumps(doc, indent=1).encode()
        # atomic, but no fsync: a status lost in a power cut is rewritten seconds later
        tmp = self.status_path.with_name(f".{self.status_path.name}.tmp")
        await asyncio.to_thread(tmp.write_bytes, data)
        await asyncio.to_thread(os.replace, tmp, self.status_path)
        return doc

    async def _report_health(self) -> None:
        """Write the status file every ``status_interval_s``; log a health line every
        ``health_interval_s`` (and at once when the problems change)."""
        cfg = self.config.log
        last_line = time.monotonic()
        said: list[str] | None = None
        while True:
            try:
                doc = await self._write_status()
            except (OSError, SpoolError) as err:
                log.warning("status file %s not written: %s", self.status_path, err)
            else:
                now = self.clock()
                found = problems(doc, now, self.health_limits)
                if time.monotonic() - last_line >= cfg.health_interval_s or found != said:
                    line = health_line(doc, now, self.health_limits)
                    log.log(logging.WARNING if found else logging.INFO, "%s", line)
                    last_line, said = time.monotonic(), found
            await asyncio.sleep(cfg.status_interval_s)

    def status(self) -> dict[str, Any]:
        """Live counts for the demo and metrics."""
        up = self.uplink.stats if self.uplink else None
        return {
            "readings": self.counters.readings_acquired,
            "committed": self.counters.readings_committed,
            "windows_signed": self.counters.windows_signed,
            "gap_records": self.counters.gap_records,
            "anomalous_rows": self.counters.anomalous_rows,
            "last_max_score": round(self.counters.last_max_score, 3),
            "proofs_synced": up.synced_windows if up else 0,
            "readings_synced": up.synced_readings if up else 0,
            "uplink_failures": up.failures if up else 0,
            "uplink_stopped": up.stopped if up else None,
            "disk_full_retries": self.counters.disk_full_retries,
            "signer_retries": self.counters.signer_retries,
            "connector_failures": dict(self.connector_failures),
            "model_swaps": self.counters.model_swaps,
            "model_error": self.model_error,
            "hub_log": (self.logwatch.fork or (self.logwatch.last and self.logwatch.last.detail))
            if self.logwatch
            else None,
        }


def _release(
    waiters: list[tuple[int, asyncio.Future[None]]], durable: int
) -> list[tuple[int, asyncio.Future[None]]]:
    """Finish the waiters whose seq target is below ``durable``; the ones still waiting."""
    keep = []
    for target, fut in waiters:
        if target <= durable:
            if not fut.done():
                fut.set_result(None)
        else:
            keep.append((target, fut))
    return keep
