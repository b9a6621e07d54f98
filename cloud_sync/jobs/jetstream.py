"""The job queue on NATS JetStream: a work-queue stream of job ids and the worker loop.

- Stream: retention ``workqueue`` (a message leaves the stream once acknowledged), file
  storage, one subject per hub (``<prefix>.run``); workers share one durable pull consumer,
  so each job goes to one worker at a time.
- Explicit acks. While a job runs the worker sends ``in_progress`` every third of
  ``ack_wait``, so a long job is not redelivered; a worker that dies (kill -9, power) stops
  sending, and after ``ack_wait`` JetStream hands the job to another worker.
- ``max_deliver`` is ``max_runs + 1``: the extra delivery never runs the job, it marks the row
  dead-lettered and terminates the message. A job that kills every worker that runs it ends
  there after ``max_runs`` runs instead of looping.
- A message that is not a job id (poison) is terminated and logged; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from cloud_sync.jobs.execute import Outcome, execute
from cloud_sync.jobs.store import JobStore
from cloud_sync.jobs.types import JobError, JobTypes

__all__ = ["JetStreamQueue", "QueueConfig", "QueueUnavailable", "serve_worker"]

_log = logging.getLogger(__name__)


class QueueUnavailable(JobError):
    """NATS could not be reached or refused the stream."""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    url: str = "nats://127.0.0.1:4222"
    stream: str = "FACTORYOPS_JOBS"
    subject: str = "factoryops.jobs.run"
    durable: str = "factoryops-workers"
    ack_wait_s: float = 30.0  # a silent worker is presumed dead after this
    max_runs: int = 3  # runs without an outcome before the job is dead-lettered
    connect_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    fetch_timeout_s: float = 1.0  # how long one idle pull waits (bounds shutdown latency)

    @classmethod
    def for_stream(cls, url: str, stream: str, **kw: float | int) -> QueueConfig:
        """The queue of stream ``stream`` (subject and durable named after it)."""
        return cls(url, stream, f"{stream.lower()}.run", f"{stream.lower()}-workers", **kw)  # type: ignore[arg-type]  # the numeric fields only

    @property
    def heartbeat_s(self) -> float:
        return self.ack_wait_s / 3


async def _connect(cfg: QueueConfig, name: str) -> Client:
    try:
        return await nats.connect(
            cfg.url, name=name, connect_timeout=cfg.connect_timeout_s, max_reconnect_attempts=-1,
            allow_reconnect=True,
        )  # fmt: skip
    except (OSError, NatsError) as err:
        raise QueueUnavailable(
            f"cannot reach NATS at {cfg.url}: {err}",
            hint="start nats-server -js, or run the hub without --nats (jobs then run inside it)",
        ) from err


async def _reach(cfg: QueueConfig, name: str) -> Client:
    """``_connect`` within ``connect_timeout_s`` in all: nats-py retries a first connection
    that is refused without end (``max_reconnect_attempts=-1``), which held a job submission
    forever when NATS was down; the hub answers 503 ``queue_unavailable`` instead."""
    try:
        async with asyncio.timeout(cfg.connect_timeout_s):
            return await _connect(cfg, name)
    except TimeoutError as err:
        raise QueueUnavailable(
            f"cannot reach NATS at {cfg.url} within {cfg.connect_timeout_s} s",
            hint="start nats-server -js, or run the hub without --nats (jobs then run inside it)",
        ) from err


async def _ensure_stream(js: JetStreamContext, cfg: QueueConfig) -> None:
    try:
        await js.stream_info(cfg.stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=cfg.stream,
                subjects=[cfg.subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )


class JetStreamQueue:
    """The hub's side: publishes job ids (connects on first use, one connection)."""

    def __init__(self, cfg: QueueConfig) -> None:
        self.cfg = cfg
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()

    async def _jetstream(self) -> JetStreamContext:
        async with self._lock:
            if self._js is None:
                self._nc = await _reach(self.cfg, "factoryops-hub")
                self._js = self._nc.jetstream()
                await _ensure_stream(self._js, self.cfg)
            return self._js

    async def publish(self, job_id: int) -> None:
        js = await self._jetstream()
        try:
            await js.publish(
                self.cfg.subject,
                json.dumps({"job": job_id}).encode(),
                timeout=self.cfg.publish_timeout_s,
                headers={"Nats-Msg-Id": f"job-{job_id}"},  # JetStream dedupes a retried publish
            )
        except (NatsError, OSError) as err:
            raise QueueUnavailable(f"NATS refused job {job_id}: {err}") from err

    async def close(self) -> None:
        """Close the connection; a NATS that is gone must not hold the hub's shutdown."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s):
                await nc.close()
        except (TimeoutError, NatsError, OSError) as err:
            _log.warning("closing the NATS connection: %s", err)


def _job_id(msg: Msg) -> int | None:
    try:
        doc: Any = json.loads(msg.data)
    except ValueError:
        return None
    job = doc.get("job") if isinstance(doc, dict) else None
    return job if isinstance(job, int) and not isinstance(job, bool) and job > 0 else None


@dataclass
class _Worker:
    cfg: QueueConfig
    store: JobStore
    types: JobTypes
    name: str
    data_dir: Path
    db_url: str

    async def handle(self, msg: Msg) -> Outcome:
        job_id = _job_id(msg)
        if job_id is None:
            _log.error("poison message on %s: %r, terminated", msg.subject, msg.data[:200])
            await msg.term()
            return Outcome.SKIPPED
        delivered = msg.metadata.num_delivered
        if delivered > self.cfg.max_runs:
            job = self.store.get(job_id)
            last = job.worker if job is not None else None
            self.store.dead_letter(
                job_id,
                f"delivered {delivered} times, {self.cfg.max_runs} runs ended without an"
                f" outcome (the worker died or lost NATS each time; last worker: {last})",
            )
            await msg.term()
            return Outcome.SKIPPED
        run = asyncio.create_task(
            asyncio.to_thread(
                execute, self.store, self.types, job_id, worker=self.name, attempt=delivered,
                data_dir=self.data_dir, db_url=self.db_url, isolated=True,
            )
        )  # fmt: skip
        while True:
            done, _ = await asyncio.wait({run}, timeout=self.cfg.heartbeat_s)
            if done:
                break
            try:
                await msg.in_progress()  # "still working": restarts the ack_wait clock
            except (NatsError, OSError) as err:
                # the job keeps running; its outcome is in the database, and a redelivery
                # to another worker finds it there and only acknowledges
                _log.warning("job %d: heartbeat to NATS failed: %s", job_id, err)
        outcome = run.result()
        try:
            await msg.ack()
        except (NatsError, OSError) as err:
            _log.warning("job %d: ack failed (%s); a redelivery will find it finished", job_id, err)
        return outcome


async def serve_worker(
    cfg: QueueConfig,
    store: JobStore,
    types: JobTypes,
    *,
    name: str,
    data_dir: Path,
    db_url: str,
    stop: asyncio.Event,
) -> None:
    """Take jobs from the queue one at a time until ``stop`` is set."""
    nc = await _connect(cfg, name)
    try:
        js = nc.jetstream()
        await _ensure_stream(js, cfg)
        sub = await js.pull_subscribe(
            cfg.subject,
            durable=cfg.durable,
            stream=cfg.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait_s,
                max_deliver=cfg.max_runs + 1,
                max_ack_pending=1024,
            ),
        )
        worker = _Worker(cfg, store, types, name, data_dir, db_url)
        _log.info("worker %s serving %s on %s", name, cfg.subject, cfg.url)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=cfg.fetch_timeout_s)
            except NatsTimeout:
                continue
            except (NatsError, OSError) as err:
                _log.warning("fetch from NATS failed (%s); retrying", err)
                await asyncio.sleep(cfg.fetch_timeout_s)  # the client reconnects meanwhile
                continue
            for msg in msgs:
                outcome = await worker.handle(msg)
                _log.info("worker %s: %s -> %s", name, msg.data[:40], outcome.value)
    finally:
        await nc.close()
