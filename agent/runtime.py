"""The agent supervisor: connectors -> window builder -> scorer -> signer -> spool -> uplink.

One event loop, one TaskGroup, every task named. Queues are bounded: connectors wait
(backpressure) rather than buffer without limit; signing and SQLite run off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.connectors.base import Connector, Emit, NeedsCommit, Sample
from agent.connectors.common import reraise_if_cancelling
from agent.connectors.registry import build_connectors
from agent.errors import ConfigError, SpoolError
from agent.logwatch import LogWatch
from agent.metrics import AgentMetrics, MetricsServer
from agent.notify import notify
from agent.scoring import Reloadable, Scorer
from agent.sealer import SealedWindow, seal
from agent.spool import ShedPolicy, Spool
from agent.uplink import DeviceToken, Uplink
from agent.window import ClosedWindow, WindowBuilder, merge_windows, runs
from attestation.errors import Fixable
from attestation.microproof import Gap
from attestation.policy import ShedPolicyStatement, sign_policy
from attestation.signers.base import Signer

__all__ = ["AgentCounters", "AgentRuntime", "connectors_from_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")
STOPPED_UNCOMMITTED = "agent stopped before these readings were committed (disk full)"


@dataclass
class AgentCounters:
    readings_acquired: int = 0
    readings_committed: int = 0
    windows_signed: int = 0
    gap_records: int = 0
    backpressure_waits: int = 0
    disk_full_retries: int = 0  # window commits retried because the disk was full
    model_swaps: int = 0
    model_swap_failures: int = 0
    last_sign_s: float = 0.0
    anomalous_rows: int = 0  # rows whose smoothed model score passed the threshold
    last_max_score: float = 0.0


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def connectors_from_config(config: AgentConfig) -> list[Connector]:
    """The connectors a config names (see ``agent.connectors.registry``)."""
    return build_connectors(config)


@dataclass
class AgentRuntime:
    """Runs until ``stop`` is set; then seals what is open and tries one last upload."""

    config: AgentConfig
    signer: Signer
    connectors: Sequence[Connector]
    scorer: Scorer | None = None
    clock: Callable[[], int] = time.time_ns
    queue_batches: int = 256  # connector batches buffered before connectors wait
    counters: AgentCounters = field(default_factory=AgentCounters)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    disk_full_backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.2, cap_s=10.0))
    stop_grace_s: float = 30.0  # how long a stop waits for a full disk before giving up
    connector_stop_s: float = 5.0  # how long a stop waits for connectors before sealing
    restart_backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, cap_s=30.0))
    restart_limit: int | None = None  # restarts in a row before a failing connector is left off
    connector_failures: dict[str, str] = field(default_factory=dict)
    model_reload_s: float = 5.0  # how often the model manifest is checked for a new version
    model_error: str | None = None  # why the last model swap was refused
    spool: Spool = field(init=False)
    uplink: Uplink | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        cfg = self.config
        self.spool = Spool(cfg.spool.path, seq_block=cfg.spool.seq_block)
        self._spool_pool = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._sign_pool = ThreadPoolExecutor(1, thread_name_prefix="signer")
        self.builder = WindowBuilder(
            cfg.window.max_readings, cfg.window.max_ms, next_seq=self.spool.first_free_seq
        )
        self._reserved = self.spool.state().reserved_seq
        # seqs lost before this start: the first window signs them as gap records
        self.builder.gaps = list(self.spool.recovered_gaps)
        for gap in self.builder.gaps:
            log.warning("spool: %s", gap)
        self._closed: list[ClosedWindow] = []
        self._closed_readings = 0
        self._seal_lock = asyncio.Lock()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (seq target, marker)
        # seqs below the first one this run hands out are committed or owned by gap records
        self._committed_next = self.builder.next_seq
        self._rng = random.Random()
        if cfg.hub.url:
            self.uplink = Uplink(
                self.spool,
                cfg.hub.url,
                self._spool_call,
                batch=cfg.hub.batch_proofs,
                timeout_s=cfg.hub.timeout_s,
                on_synced=self._synced,
                # an enrolled TPM key must authenticate; a development key need not
                device_token=DeviceToken(cfg.hub.url, self.signer)
                if self.signer.kind == "tpm"
                else None,
                signer_der=self.signer.public_key_der(),
            )
        self.logwatch: LogWatch | None = None
        if cfg.hub.url and cfg.hub.log_key is not None:
            self.logwatch = LogWatch(
                cfg.hub.url, cfg.hub.log_key, cfg.spool.path.with_name("hub-checkpoints.json")
            )
        self.metrics.watch_connectors(lambda: self.connectors)
        self.metrics_server: MetricsServer | None = None

    async def _spool_call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._spool_pool, fn)

    def _synced(self, windows: list[int]) -> None:
        self.metrics.synced.inc(len(windows))
        self.metrics.last_sync.set(time.time())

    async def run(self, stop: asyncio.Event) -> None:
        # batches of samples, and commit markers (see ``committed``)
        self._queue: asyncio.Queue[list[Sample] | asyncio.Future[None]] = asyncio.Queue(
            self.queue_batches
        )
        self._room = asyncio.Event()
        self._room.set()
        self._work = asyncio.Event()
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
        try:
            async with asyncio.TaskGroup() as tg:
                acquiring = [
                    tg.create_task(self._supervise(c), name=f"connector[{c.name}]")
                    for c in self.connectors
                ]
                collector = tg.create_task(self._collect(), name="collector")
                sealer = tg.create_task(self._seal_loop(), name="sealer")
                uplink = tg.create_task(self.uplink.run(), name="uplink") if self.uplink else None
                watch = (
                    tg.create_task(self.logwatch.run(), name="logwatch") if self.logwatch else None
                )
                models = tg.create_task(self._watch_model(), name="model-watch")
                notify("READY=1")  # systemd Type=notify: started, SIGTERM now stops cleanly
                await stop.wait()
                notify("STOPPING=1")
                for task in (*acquiring, collector):
                    task.cancel()
                await self._connectors_stopped(acquiring)
                await asyncio.gather(collector, return_exceptions=True)
                await self._drain_queue()
                self._take(self.builder.flush())
                await self._seal_on_stop()
                for _, fut in self._waiters:  # never committed: their sources must not ack
                    fut.cancel()
                sealer.cancel()
                if watch is not None:
                    watch.cancel()
                models.cancel()
                if uplink is not None and self.uplink is not None:
                    uplink.cancel()
                    # its own clean-up (a send it was in marks its proofs failed) first
                    await asyncio.gather(uplink, return_exceptions=True)
                    try:
                        async with asyncio.timeout(10):
                            await self.uplink.drain()
                    except TimeoutError:  # they stay queued: the next start sends them
                        log.warning("uplink: shutdown upload stopped after 10 s")
        finally:
            if self.metrics_server is not None:
                self.metrics_server.close()
            await self._spool_call(self.spool.close)
            self._spool_pool.shutdown()
            self._sign_pool.shutdown()

    async def _seal_on_stop(self) -> None:
        """Commit what is left; if the disk stays full, say which seqs were lost and why."""
        try:
            async with asyncio.timeout(self.stop_grace_s):
                await self._seal_pending()
        except TimeoutError:
            # the spool thread runs one call at a time: this sees every commit that landed
            st = await self._spool_call(self.spool.state)
            lost = Gap(st.next_seq, self.builder.next_seq - 1, STOPPED_UNCOMMITTED)
            log.error("stopping with %s", lost)  # noqa: TRY400 - a fact, not a crash
            with contextlib.suppress(SpoolError):  # if even this fails, a restart reports it
                await self._spool_call(lambda: self.spool.release(lost.last + 1, [lost]))
            return
        # everything acquired is committed: a clean stop leaves no gap record
        await self._spool_call(self.spool.release)

    async def _supervise(self, connector: Connector) -> None:
        """Run one connector; if it fails, restart it alone after a backoff.

        A connector handles its own peer's failures (reconnects); what reaches here is a
        bug or a configuration error. A ``ConfigError`` stops that connector for good (a
        restart cannot fix it); anything else restarts it, up to ``restart_limit`` times in
        a row. The other connectors, and the agent, keep running either way.
        """
        name = connector.name
        up = self.metrics.connector_up.labels(name)
        if isinstance(connector, NeedsCommit):
            connector.bind_committed(self.committed)
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
                log.error("connector %s stopped: %s (hint: %s)", name, err, err.hint)  # noqa: TRY400
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
                log.error("model %s refused, the previous model keeps running: %s", path, err)  # noqa: TRY400
            else:
                self.counters.model_swaps += 1
                self.model_error = None
                log.info("model swapped in from %s", path)

    def _emitter(self, connector: str) -> Emit:
        readings = self.metrics.readings.labels(connector)

        async def emit(samples: list[Sample]) -> None:
            """What a connector calls: waits while the signer is behind by too many readings."""
            if not self._room.is_set():
                self.counters.backpressure_waits += 1
                await self._room.wait()
            await self._queue.put(samples)
            readings.inc(len(samples))

        return emit

    async def committed(self) -> None:
        """Return once everything emitted before this call is committed in the spool."""
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(marker)
        await marker

    def _release_waiters(self) -> None:
        keep = []
        for target, fut in self._waiters:
            if target <= self._committed_next:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._waiters = keep

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

    async def _drain_queue(self) -> None:
        while not self._queue.empty():
            await self._add(self._queue.get_nowait())

    async def _add(self, item: list[Sample] | asyncio.Future[None]) -> None:
        if isinstance(item, asyncio.Future):
            # a commit marker: done once the spool holds every seq handed out so far; the
            # open window is closed now so the waiter does not wait for it to age
            self._waiters.append((self.builder.next_seq, item))
            self._take(self.builder.flush())
            self._release_waiters()
            return
        samples = item
        if self.builder.next_seq + len(samples) > self._reserved:
            # durable before the seqs are handed out; one short write per seq block
            upto = self.builder.next_seq + len(samples)
            self._reserved = await self._retrying_disk_full(lambda: self.spool.reserve(upto))
        self.counters.readings_acquired += len(samples)
        self._take(self.builder.add(samples, self.clock()))

    def _take(self, closed: list[ClosedWindow]) -> None:
        if not closed:
            return
        self._closed.extend(closed)
        self._closed_readings += sum(len(w.readings) for w in closed)
        if self._closed_readings >= self.config.window.max_pending_readings:
            self._room.clear()
        self._work.set()

    async def _collect(self) -> None:
        while True:
            try:
                async with asyncio.timeout(0.05):  # not wait_for: see uplink.py
                    item = await self._queue.get()
            except TimeoutError:
                self._take(self.builder.tick(self.clock()))
                continue
            await self._add(item)

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
        started = time.monotonic()
        sealed: SealedWindow = await loop.run_in_executor(
            self._sign_pool,
            lambda: seal(
                window,
                index=st.next_window,
                prev=st.prev_hash,
                signer=self.signer,
                iat=self.clock() // 1_000_000_000,
                scores=scores,
            ),
        )
        self.counters.last_sign_s = time.monotonic() - started
        self.metrics.sign_seconds.observe(self.counters.last_sign_s)
        # a full disk keeps the signed window in memory and retries the same bytes
        await self._retrying_disk_full(lambda: self.spool.commit(sealed, now_ns=self.clock()))
        self._committed_next = window.readings[-1].seq + 1
        self._release_waiters()
        self.counters.windows_signed += 1
        self.counters.readings_committed += len(window.readings)
        self.counters.gap_records += len(window.gaps)
        self.metrics.windows_signed.inc()
        self.metrics.gap_records.inc(len(window.gaps))
        if scores is not None:
            self.counters.anomalous_rows += scores.anomaly.count
            self.counters.last_max_score = scores.anomaly.max_score

    async def _retrying_disk_full(self, write: Callable[[], T]) -> T:
        """Run a spool write; while the disk is full, shed synced readings and try again.

        Nothing is lost while waiting: the caller holds the data, and acquisition slows
        down by backpressure once ``max_pending_readings`` are waiting.
        """
        attempt = 0
        while True:
            try:
                return await self._spool_call(write)
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
            "connector_failures": dict(self.connector_failures),
            "model_swaps": self.counters.model_swaps,
            "model_error": self.model_error,
            "hub_log": (self.logwatch.fork or (self.logwatch.last and self.logwatch.last.detail))
            if self.logwatch
            else None,
        }
