"""Run one job: the one path both the NATS worker and the in-process runner take.

It starts the row, runs the type's function with a context that reports progress and logs
to the row, and records the outcome: a result, a failure with its traceback, or a
cancellation. A job that raises is a failure of that job, never of the worker.
"""

from __future__ import annotations

import enum
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloud_sync.jobs.store import JobStore
from cloud_sync.jobs.types import JobCancelled, JobInterrupted, JobRefused, JobTypes

__all__ = ["Outcome", "RunContext", "execute"]

_log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # another run wrote the outcome first, or the row left RUNNING meanwhile
    INTERRUPTED = "interrupted"  # the runner stopped mid-job; the row waits for a rerun
    SKIPPED = "skipped"  # nothing to run: unknown id, finished already, or not startable


@dataclass
class RunContext:
    """The ``JobContext`` of one run, writing to the job's row."""

    store: JobStore
    job_id: int
    attempt: int
    data_dir: Path
    db_url: str
    isolated: bool
    stopping: Callable[[], bool] = lambda: False  # the runner is shutting down

    def progress(self, fraction: float, message: str = "") -> None:
        if self.stopping():
            raise JobInterrupted(f"job {self.job_id}: its runner is stopping")
        if self.store.progress(self.job_id, fraction, message):
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def log(self, line: str) -> None:
        _log.info("job %d: %s", self.job_id, line)
        self.store.log(self.job_id, self.attempt, line)


def execute(
    store: JobStore,
    types: JobTypes,
    job_id: int,
    *,
    worker: str,
    attempt: int,
    data_dir: Path,
    db_url: str,
    isolated: bool,
    stopping: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Run job ``job_id`` to its outcome (blocking; call it from a thread in async code)."""
    job = store.get(job_id)
    if job is None or job.done:
        return Outcome.SKIPPED
    if job.cancel_requested:
        return Outcome.CANCELLED if store.cancelled(job_id) else Outcome.LOST
    if not store.start(job_id, worker, attempt):
        return Outcome.SKIPPED
    ctx = RunContext(store, job_id, attempt, data_dir, db_url, isolated, stopping)
    try:
        # checked again here: a worker may run an older build than the hub that queued it
        params = types.validate(job.type, job.params)
        result = types.get(job.type).run(ctx, params)
    except JobInterrupted:
        store.log(job_id, attempt, f"interrupted on {worker}: it runs again at the next start")
        return Outcome.INTERRUPTED
    except JobCancelled:
        return Outcome.CANCELLED if store.cancelled(job_id) else Outcome.LOST
    except JobRefused as err:
        done = store.fail(job_id, f"{err.code}: {err.detail} (on worker {worker})")
        return Outcome.FAILED if done else Outcome.LOST
    except Exception as err:  # noqa: BLE001 - any error of the job is its failure, not ours
        _log.warning("job %d failed: %s", job_id, err)
        done = store.fail(job_id, f"{type(err).__name__}: {err}", traceback.format_exc())
        return Outcome.FAILED if done else Outcome.LOST
    return Outcome.SUCCEEDED if store.succeed(job_id, dict(result)) else Outcome.LOST
