"""Job rows in the hub database: submit, start, progress, logs, outcome, cancel, dead letter.

Every state change is a compare-and-set on the states the lifecycle table allows, so two
workers that both hold a job (one lost NATS, the other got the redelivery) cannot both
write an outcome: the first wins, the second learns it lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Row, func, insert, select, update

from cloud_sync.jobs.lifecycle import TERMINAL, JobEvent, JobState, advance, sources
from cloud_sync.storage.tables import job_logs, jobs

__all__ = ["JobLimits", "JobRow", "JobStore"]

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class JobLimits:
    max_params_bytes: int = 64 << 10  # a job's parameters name data, they do not carry it
    max_result_bytes: int = 4 << 20  # trial histories of a few thousand points fit
    max_log_lines: int = 2_000  # per job; later lines are counted, not stored
    max_line_chars: int = 2_000
    max_traceback_chars: int = 20_000


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    type: str
    params: dict[str, Any]
    site: str | None
    state: JobState
    progress: float
    message: str
    result: dict[str, Any] | None
    error: str | None
    traceback: str | None
    attempts: int
    worker: str | None
    cancel_requested: bool
    submitted_by: str
    created_ns: int
    started_ns: int | None
    finished_ns: int | None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "params": self.params,
            "site": self.site,
            "state": self.state.value,
            "progress": self.progress,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "worker": self.worker,
            "cancel_requested": self.cancel_requested,
            "submitted_by": self.submitted_by,
            "created_ns": self.created_ns,
            "started_ns": self.started_ns,
            "finished_ns": self.finished_ns,
        }


def _row(r: Row[Any]) -> JobRow:
    return JobRow(
        id=r.id,
        type=r.type,
        params=json.loads(r.params),
        site=r.site,
        state=JobState(r.state),
        progress=r.progress,
        message=r.message,
        result=json.loads(r.result) if r.result is not None else None,
        error=r.error,
        traceback=r.traceback,
        attempts=r.attempts,
        worker=r.worker,
        cancel_requested=r.cancel_requested,
        submitted_by=r.submitted_by,
        created_ns=r.created_ns,
        started_ns=r.started_ns,
        finished_ns=r.finished_ns,
    )


@dataclass
class JobStore:
    engine: Engine
    now_ns: Clock
    limits: JobLimits = JobLimits()

    def submit(self, type_: str, params: dict[str, Any], site: str | None, by: str) -> JobRow:
        body = json.dumps(params, sort_keys=True)
        if len(body) > self.limits.max_params_bytes:
            raise ValueError(f"params of {len(body)} bytes, limit {self.limits.max_params_bytes}")
        with self.engine.begin() as conn:
            key = conn.execute(
                insert(jobs).values(
                    type=type_, params=body, site=site, state=JobState.QUEUED.value,
                    progress=0.0, message="queued", attempts=0, cancel_requested=False,
                    submitted_by=by[:128], created_ns=self.now_ns(),
                )
            ).inserted_primary_key  # fmt: skip
        assert key is not None  # an INSERT of one row
        got = self.get(int(key[0]))
        assert got is not None  # just inserted
        return got

    def get(self, job_id: int) -> JobRow | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return _row(r) if r is not None else None

    def recent(
        self, *, states: Sequence[JobState] = (), limit: int = 100, type_: str | None = None
    ) -> list[JobRow]:
        q = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if states:
            q = q.where(jobs.c.state.in_([s.value for s in states]))
        if type_ is not None:
            q = q.where(jobs.c.type == type_)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q).all()]

    def logs(self, job_id: int, limit: int = 500) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(job_logs)
                .where(job_logs.c.job_id == job_id)
                .order_by(job_logs.c.id.desc())
                .limit(limit)
            ).all()
        return [{"ts_ns": r.ts_ns, "attempt": r.attempt, "line": r.line} for r in reversed(rows)]

    # transitions ----------------------------------------------------------------------------
    def _move(
        self, job_id: int, event: JobEvent, *, only: JobState | None = None, **values: Any
    ) -> bool:
        """Compare-and-set: apply ``event`` if the row is in a state it may leave (``only``
        narrows those to one)."""
        with self.engine.begin() as conn:
            r = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).first()
            if r is None:
                return False
            state = JobState(r.state)
            if state not in sources(event) or (only is not None and state is not only):
                return False
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == state.value)
                .values(state=advance(state, event).value, **values)
            )
            return done.rowcount == 1

    def start(self, job_id: int, worker: str, attempt: int) -> bool:
        now = self.now_ns()
        return self._move(
            job_id, JobEvent.START, worker=worker[:128], attempts=attempt, started_ns=now,
            heartbeat_ns=now, message=f"running on {worker} (attempt {attempt})",
        )  # fmt: skip

    def succeed(self, job_id: int, result: dict[str, Any]) -> bool:
        body = json.dumps(result, sort_keys=True, allow_nan=False)
        if len(body) > self.limits.max_result_bytes:
            return self.fail(
                job_id,
                f"result of {len(body)} bytes passes the limit of {self.limits.max_result_bytes}",
            )
        return self._move(
            job_id, JobEvent.SUCCEED, result=body, progress=1.0, message="done",
            finished_ns=self.now_ns(),
        )  # fmt: skip

    def fail(self, job_id: int, error: str, traceback: str | None = None) -> bool:
        tb = traceback[-self.limits.max_traceback_chars :] if traceback else None
        return self._move(
            job_id, JobEvent.FAIL, error=error[:4000], traceback=tb, message="failed",
            finished_ns=self.now_ns(),
        )  # fmt: skip

    def dead_letter(self, job_id: int, reason: str) -> bool:
        return self._move(
            job_id, JobEvent.DEAD_LETTER, error=reason[:4000], message="dead-lettered",
            finished_ns=self.now_ns(),
        )  # fmt: skip

    def cancel(self, job_id: int) -> JobRow | None:
        """A queued job ends cancelled now; a running one is asked to stop at its next report."""
        if not self._move(
            job_id, JobEvent.CANCEL, only=JobState.QUEUED, message="cancelled before it ran",
            finished_ns=self.now_ns(),
        ):  # fmt: skip
            with self.engine.begin() as conn:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value)
                    .values(cancel_requested=True, message="cancel requested")
                )
        return self.get(job_id)

    def cancelled(self, job_id: int) -> bool:
        return self._move(
            job_id, JobEvent.CANCEL, message="cancelled while running",
            finished_ns=self.now_ns(),
        )  # fmt: skip

    # while running ---------------------------------------------------------------------------
    def progress(self, job_id: int, fraction: float, message: str) -> bool:
        """Record progress; True when a cancel was asked."""
        fraction = min(max(fraction, 0.0), 1.0)
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value)
                .values(progress=fraction, message=message[:500], heartbeat_ns=self.now_ns())
            )
            r = conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).first()
        return bool(r and r.cancel_requested)

    def log(self, job_id: int, attempt: int, line: str) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(
                select(func.count()).select_from(job_logs).where(job_logs.c.job_id == job_id)
            ).scalar_one()
            if n >= self.limits.max_log_lines:
                return  # the job's log is full; its outcome still lands in the row
            conn.execute(
                insert(job_logs).values(
                    job_id=job_id, ts_ns=self.now_ns(), attempt=attempt,
                    line=line[: self.limits.max_line_chars],
                )
            )  # fmt: skip
