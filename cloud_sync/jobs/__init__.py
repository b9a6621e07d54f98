"""Fleet jobs: submitted through the hub, run by workers fed from NATS JetStream (or in process).

The job row in the hub database is the truth (state, progress, logs, result); the queue only
carries job ids. ``lifecycle`` is the pure state table, ``types`` the registry of job types
and their parameters, ``store`` the rows, ``execute`` the one way a job is run, ``nats`` the
JetStream queue and worker, ``inprocess`` the brokerless runner; the HTTP side is
``cloud_sync.routes.jobs``, wired by ``hub``.
"""

from cloud_sync.jobs.lifecycle import TERMINAL, JobEvent, JobState, advance
from cloud_sync.jobs.store import JobRow, JobStore
from cloud_sync.jobs.types import JobContext, JobError, JobType, JobTypes, default_job_types

__all__ = [
    "TERMINAL",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobRow",
    "JobState",
    "JobStore",
    "JobType",
    "JobTypes",
    "advance",
    "default_job_types",
]
