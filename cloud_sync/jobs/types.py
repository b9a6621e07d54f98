"""The registry of job types: each names its parameters (pydantic, at the boundary) and a
function that runs it. Validation happens at submission, so a job that is queued has
parameters its type accepts; an unknown type or a bad field is refused with its name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_sync.errors import HubError

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobInterrupted",
    "JobRefused",
    "JobType",
    "JobTypes",
    "SelftestParams",
    "default_job_types",
]


class JobError(HubError):
    """Root of the job errors."""


class JobRefused(JobError):
    """A submission the hub will not queue: unknown type, or parameters the type refuses."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}", hint="factoryops hub job types lists the types")
        self.code = code
        self.detail = detail


class JobCancelled(JobError):
    """Raised inside a running job at its next progress report once a cancel was asked."""


class JobInterrupted(JobError):
    """Raised inside a running job when its runner is stopping: the row stays ``running``
    and the job runs again from the start when the hub (or another worker) takes it."""


class JobContext(Protocol):
    """What a running job may do besides computing: report, log, and find its files."""

    job_id: int
    attempt: int
    data_dir: Path  # the hub's data directory (datasets, models, the TUF repository)
    db_url: str  # the hub's database (Optuna studies live there too)
    isolated: bool  # True in a worker process, False inside the hub

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress (0..1); raises JobCancelled when a cancel was asked."""
        ...

    def log(self, line: str) -> None: ...


Runner = Callable[[JobContext, Any], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    params: type[BaseModel]
    run: Runner
    summary: str


@dataclass(frozen=True, slots=True)
class JobTypes:
    """The job types a hub accepts and its workers run (both must hold the same set)."""

    types: Mapping[str, JobType]

    def get(self, name: str) -> JobType:
        jt = self.types.get(name)
        if jt is None:
            known = ", ".join(sorted(self.types)) or "none"
            raise JobRefused(
                "unknown_job_type", f"type {name!r} is not a job type (known: {known})"
            )
        return jt

    def validate(self, name: str, params: Any) -> BaseModel:
        """The parameters as the type's model, or JobRefused naming the first bad field."""
        jt = self.get(name)
        if not isinstance(params, dict):
            raise JobRefused("invalid_params", "params must be a JSON object")
        try:
            return jt.params.model_validate(params)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "params"
            raise JobRefused("invalid_params", f"params.{where}: {first['msg']}") from err

    def with_types(self, *extra: JobType) -> JobTypes:
        return JobTypes({**self.types, **{t.name: t for t in extra}})


class SelftestParams(BaseModel):
    """A job that only counts: checks a deployment's queue, workers and failure paths."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(default=5, ge=1, le=10_000)
    step_seconds: float = Field(default=0.1, ge=0.0, le=60.0)
    fail_at_step: int | None = Field(default=None, ge=0)  # raise there: the job fails
    # end the worker process there (os._exit): a job that kills whoever runs it, which must
    # end dead-lettered after the run limit, not in a crash loop. Refused inside the hub.
    crash_worker_at_step: int | None = Field(default=None, ge=0)


def _selftest(ctx: JobContext, p: SelftestParams) -> dict[str, Any]:
    pause = threading.Event()  # never set: a wait that is the step's work
    for step in range(p.steps):
        if step == p.fail_at_step:
            raise RuntimeError(f"selftest asked to fail at step {step}")
        if step == p.crash_worker_at_step:
            if not ctx.isolated:
                raise RuntimeError("crash_worker_at_step needs a worker process, not the hub")
            os._exit(70)  # EX_SOFTWARE; the point of this parameter
        ctx.progress(step / p.steps, f"step {step + 1} of {p.steps}")
        pause.wait(p.step_seconds)
    ctx.log(f"counted {p.steps} steps")
    return {"steps": p.steps, "pid": os.getpid()}


def default_job_types() -> JobTypes:
    """The job types every hub knows (the fleet types are added by ``fleet_job_types``)."""
    selftest = JobType("selftest", SelftestParams, _selftest, "count steps (checks workers)")
    return JobTypes({selftest.name: selftest})
