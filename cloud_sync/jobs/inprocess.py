"""The brokerless runner: without a NATS URL the hub runs jobs itself, one at a time, in a
thread, so the embedded default needs no broker. Jobs left queued or running by a previous
hub process are run again at start (their row says how far they got; the attempt counts).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cloud_sync.jobs.execute import Outcome, execute
from cloud_sync.jobs.lifecycle import JobState
from cloud_sync.jobs.store import JobStore
from cloud_sync.jobs.types import JobTypes

__all__ = ["InProcessRunner"]

_log = logging.getLogger(__name__)


@dataclass
class InProcessRunner:
    store: JobStore
    types: JobTypes
    data_dir: Path
    db_url: str
    name: str = field(default_factory=lambda: f"hub-{os.getpid()}")
    _pool: ThreadPoolExecutor | None = None  # made on first use, again after ``close``
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resume(self) -> int:
        """Queue again what a previous process left unfinished; how many."""
        left = self.store.recent(states=(JobState.QUEUED, JobState.RUNNING), limit=10_000)
        for job in reversed(left):  # oldest first
            self.submit(job.id, attempt=job.attempts + 1)
        return len(left)

    def submit(self, job_id: int, attempt: int = 1) -> Future[Outcome]:
        with self._lock:
            if self._pool is None:  # first use, or the app's lifespan started again
                self._stopping.clear()
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="job")
            return self._pool.submit(self._run, job_id, attempt)

    def _run(self, job_id: int, attempt: int) -> Outcome:
        outcome = execute(
            self.store, self.types, job_id, worker=self.name, attempt=attempt,
            data_dir=self.data_dir, db_url=self.db_url, isolated=False,
            stopping=self._stopping.is_set,
        )  # fmt: skip
        _log.info("job %d -> %s", job_id, outcome.value)
        return outcome

    def close(self) -> None:
        """Stop: the running job ends at its next progress report and, like the queued
        ones, stays in the database to run again at the next start."""
        self._stopping.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:  # a lifespan that starts again gets a new pool (it ran jobs in
            # a pool shut down: "cannot schedule new futures after shutdown", a 500)
            pool.shutdown(wait=True, cancel_futures=True)
