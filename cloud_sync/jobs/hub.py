"""The hub's side of the jobs, wired: the store, the dispatch (JetStream when the hub has a
NATS URL, else the in-process runner) and the router. ``create_app`` includes it in one line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from cloud_sync.jobs.fleet import fleet_job_types
from cloud_sync.jobs.inprocess import InProcessRunner
from cloud_sync.jobs.store import JobStore
from cloud_sync.jobs.types import JobTypes
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.jobs import Dispatch, jobs_router

__all__ = ["hub_jobs"]


def hub_jobs(deps: HubDeps, types: JobTypes | None = None) -> APIRouter:
    """The jobs router of a hub; its lifespan resumes (in process) and closes the queue."""
    settings = deps.settings
    store = JobStore(deps.store.engine, deps.now_ns)
    types = types or fleet_job_types()
    dispatch: Dispatch
    closers: list[Callable[[], Any]] = []
    runner: InProcessRunner | None = None
    if settings.nats_url:
        from cloud_sync.jobs.jetstream import JetStreamQueue, QueueConfig  # noqa: PLC0415 - nats only when used

        queue = JetStreamQueue(QueueConfig.for_stream(settings.nats_url, settings.jobs_stream))
        dispatch = queue.publish
        closers.append(queue.close)
    else:
        runner = InProcessRunner(store, types, settings.data_dir, settings.db_url)

        async def dispatch(job_id: int) -> None:
            assert runner is not None
            runner.submit(job_id)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.resume()
        yield
        for close in closers:
            await close()
        if runner is not None:
            runner.close()

    router = jobs_router(deps, store, types, dispatch)
    router.lifespan_context = lifespan
    return router
