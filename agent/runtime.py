"""The agent supervisor: connectors -> window builder -> scorer -> signer -> spool -> uplink.

One event loop, one TaskGroup, every task named. Queues are bounded: connectors wait
(backpressure) rather than buffer without limit; signing and SQLite run off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.config import AgentConfig
from agent.connectors.base import Connector, Sample
from agent.connectors.modbus import ModbusConnector
from agent.scoring import Scorer
from agent.sealer import SealedWindow, seal
from agent.spool import Spool
from agent.uplink import Uplink
from agent.window import ClosedWindow, WindowBuilder, merge_windows
from attestation.microproof import Gap
from attestation.signers.base import Signer

__all__ = ["AgentCounters", "AgentRuntime", "connectors_from_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AgentCounters:
    readings_acquired: int = 0
    readings_committed: int = 0
    windows_signed: int = 0
    gap_records: int = 0
    backpressure_waits: int = 0
    last_sign_s: float = 0.0
    anomalous_rows: int = 0  # rows whose smoothed model score passed the threshold
    last_max_score: float = 0.0


def connectors_from_config(config: AgentConfig) -> list[Connector]:
    """The Modbus connectors a config names (other kinds register their own builders)."""
    return [ModbusConnector(d) for d in config.modbus]


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
        self._gaps: list[Gap] = [self.spool.recovered_gap] if self.spool.recovered_gap else []
        if self._gaps:
            log.warning("spool: %s", self._gaps[0])
        self._closed: list[ClosedWindow] = []
        self._closed_readings = 0
        self._seal_lock = asyncio.Lock()
        if cfg.hub.url:
            self.uplink = Uplink(
                self.spool,
                cfg.hub.url,
                self._spool_call,
                batch=cfg.hub.batch_proofs,
                timeout_s=cfg.hub.timeout_s,
            )

    async def _spool_call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._spool_pool, fn)

    async def run(self, stop: asyncio.Event) -> None:
        self._queue: asyncio.Queue[list[Sample]] = asyncio.Queue(self.queue_batches)
        self._room = asyncio.Event()
        self._room.set()
        self._work = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                acquiring = [
                    tg.create_task(c.run(self._emit), name=f"connector[{c.name}]")
                    for c in self.connectors
                ]
                collector = tg.create_task(self._collect(), name="collector")
                sealer = tg.create_task(self._seal_loop(), name="sealer")
                uplink = tg.create_task(self.uplink.run(), name="uplink") if self.uplink else None
                await stop.wait()
                for task in (*acquiring, collector):
                    task.cancel()
                await asyncio.gather(*acquiring, collector, return_exceptions=True)
                await self._drain_queue()
                self._take(self.builder.flush())
                await self._seal_pending()
                # everything acquired is committed: a clean stop leaves no gap record
                await self._spool_call(self.spool.release)
                sealer.cancel()
                if uplink is not None and self.uplink is not None:
                    uplink.cancel()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(10):
                            await self.uplink.drain()
        finally:
            await self._spool_call(self.spool.close)
            self._spool_pool.shutdown()
            self._sign_pool.shutdown()

    async def _emit(self, samples: list[Sample]) -> None:
        """What connectors call: waits while the signer is behind by too many readings."""
        if not self._room.is_set():
            self.counters.backpressure_waits += 1
            await self._room.wait()
        await self._queue.put(samples)

    async def _drain_queue(self) -> None:
        while not self._queue.empty():
            await self._add(self._queue.get_nowait())

    async def _add(self, samples: list[Sample]) -> None:
        if self.builder.next_seq + len(samples) > self._reserved:
            # durable before the seqs are handed out; one short write per seq block
            upto = self.builder.next_seq + len(samples)
            self._reserved = await self._spool_call(lambda: self.spool.reserve(upto))
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
                    samples = await self._queue.get()
            except TimeoutError:
                self._take(self.builder.tick(self.clock()))
                continue
            await self._add(samples)

    async def _seal_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            await self._seal_pending()

    async def _seal_pending(self) -> None:
        """Sign everything closed so far as ONE window: a slow signer makes windows grow."""
        async with self._seal_lock:
            if not self._closed:
                return
            window = merge_windows(self._closed)
            self._closed, self._closed_readings = [], 0
            self._room.set()
            loop = asyncio.get_running_loop()
            scores = None
            if self.scorer is not None:
                scores = await loop.run_in_executor(
                    self._sign_pool, self.scorer.score_window, window.readings
                )
            st = await self._spool_call(self.spool.state)
            gaps, self._gaps = self._gaps, []
            started = time.monotonic()
            sealed: SealedWindow = await loop.run_in_executor(
                self._sign_pool,
                lambda: seal(
                    window,
                    index=st.next_window,
                    prev=st.prev_hash,
                    signer=self.signer,
                    iat=self.clock() // 1_000_000_000,
                    gaps=gaps,
                    scores=scores,
                ),
            )
            self.counters.last_sign_s = time.monotonic() - started
            await self._spool_call(lambda: self.spool.commit(sealed, now_ns=self.clock()))
            self.counters.windows_signed += 1
            self.counters.readings_committed += len(window.readings)
            self.counters.gap_records += len(gaps)
            if scores is not None:
                self.counters.anomalous_rows += scores.anomaly.count
                self.counters.last_max_score = scores.anomaly.max_score
            await self._spool_call(lambda: self.spool.shed(self.config.spool.disk_cap_bytes))
            if self.uplink is not None:
                self.uplink.wake.set()

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
        }
