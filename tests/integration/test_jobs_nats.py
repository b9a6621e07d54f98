"""Fleet jobs on the real NATS JetStream (127.0.0.1:4222) with real worker processes:
a worker killed mid-job is replaced, two workers share the queue, a failing job does not
stop its worker, and a poisoned message or a job that kills its workers ends dead-lettered.
Each test has its own stream, so parallel runs do not meet.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from fastapi.testclient import TestClient

from attestation.localports import free_port
from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.conftest import missing, port_open
from tests.waiting import until

pytestmark = pytest.mark.services

ACK_WAIT_S = 1.0  # short, so a dead worker's job is handed on quickly


@dataclass
class Fleet:
    """A hub on NATS and the worker processes the test starts and kills."""

    client: TestClient
    settings: HubSettings
    nats_url: str
    stream: str
    max_runs: int = 2
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.admin_token}"}

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        log = (self.settings.data_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "factoryops", "hub", "worker",
                "--data-dir", str(self.settings.data_dir), "--db", self.settings.db_url,
                "--nats", self.nats_url, "--stream", self.stream, "--name", name,
                "--ack-wait", str(ACK_WAIT_S), "--max-runs", str(self.max_runs),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
        log.close()  # the child holds its own copy
        self.workers[name] = proc
        return proc

    def submit(self, **params: Any) -> int:
        r = self.client.post(
            "/v1/jobs", json={"type": "selftest", "params": params}, headers=self.auth
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        got: dict[str, Any] = self.client.get(f"/v1/jobs/{job_id}", headers=self.auth).json()
        return got

    async def ended(self, job_id: int, within_s: float = 60.0) -> dict[str, Any]:
        await until(
            lambda: self.job(job_id)["state"] in {"succeeded", "failed", "cancelled", "dead"},
            within_s,
        )
        return self.job(job_id)


@pytest.fixture
def fleet(tmp_path: Path, nats_url: str) -> Iterator[Fleet]:
    stream = f"TEST_JOBS_{uuid.uuid4().hex[:10].upper()}"
    settings = HubSettings.create(tmp_path / "hub", nats_url=nats_url, jobs_stream=stream)
    with TestClient(create_app(settings)) as client:
        f = Fleet(client, settings, nats_url, stream)
        try:
            yield f
        finally:
            for proc in f.workers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in f.workers.values():
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
                if proc.poll() is None:
                    proc.kill()
    asyncio.run(_drop_stream(nats_url, stream))


async def _drop_stream(url: str, stream: str) -> None:
    nc = await nats.connect(url)
    with suppress(Exception):  # already gone: nothing to clean
        await nc.jetstream().delete_stream(stream)
    await nc.close()


@asynccontextmanager
async def _nats(url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def test_a_worker_killed_mid_job_is_replaced_and_another_finishes_it(fleet: Fleet) -> None:
    async def scenario() -> None:
        first = fleet.worker("w-first")
        job_id = fleet.submit(steps=30, step_seconds=0.1)
        await until(lambda: fleet.job(job_id)["progress"] > 0.2)
        assert fleet.job(job_id)["worker"] == "w-first"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        fleet.worker("w-second")
        got = await fleet.ended(job_id)
        assert got["state"] == "succeeded", got
        assert got["worker"] == "w-second" and got["attempts"] == 2
        assert got["result"]["pid"] == fleet.workers["w-second"].pid

    asyncio.run(scenario())


def test_two_workers_share_the_queue_and_long_jobs_are_not_redelivered(fleet: Fleet) -> None:
    async def scenario() -> None:
        fleet.worker("w-a")
        fleet.worker("w-b")
        # each job runs ~3 ack_waits: only the heartbeats keep it from a redelivery
        ids = [fleet.submit(steps=30, step_seconds=0.1) for _ in range(4)]
        done = [await fleet.ended(i, within_s=120) for i in ids]
        assert [d["state"] for d in done] == ["succeeded"] * 4, done
        assert [d["attempts"] for d in done] == [1] * 4
        assert {d["worker"] for d in done} == {"w-a", "w-b"}

    asyncio.run(scenario())


def test_a_job_that_raises_is_failed_with_its_traceback_and_the_worker_keeps_serving(
    fleet: Fleet,
) -> None:
    async def scenario() -> None:
        proc = fleet.worker("w-one")
        bad = fleet.submit(steps=3, fail_at_step=2)
        good = fleet.submit(steps=2)
        failed = await fleet.ended(bad)
        assert failed["state"] == "failed" and failed["attempts"] == 1
        assert failed["error"] == "RuntimeError: selftest asked to fail at step 2"
        assert "Traceback (most recent call last)" in failed["traceback"]
        ok = await fleet.ended(good)
        assert ok["state"] == "succeeded" and ok["worker"] == "w-one"
        assert proc.poll() is None

    asyncio.run(scenario())


def test_a_poisoned_message_is_terminated_and_the_worker_keeps_serving(fleet: Fleet) -> None:
    async def scenario() -> None:
        proc = fleet.worker("w-one")
        good = fleet.submit(steps=1)
        assert (await fleet.ended(good))["state"] == "succeeded"  # the stream exists now
        subject = f"{fleet.stream.lower()}.run"
        async with _nats(fleet.nats_url) as js:
            await js.publish(subject, b"\xff not json")
            await js.publish(subject, json.dumps({"job": "1; DROP TABLE jobs"}).encode())
            after = fleet.submit(steps=1)
            assert (await fleet.ended(after))["state"] == "succeeded"
            info = await js.stream_info(fleet.stream)
            assert info.state.messages == 0  # terminated, not left to loop
        assert proc.poll() is None

    asyncio.run(scenario())


def test_a_job_that_kills_every_worker_ends_dead_lettered_not_in_a_crash_loop(
    fleet: Fleet,
) -> None:
    async def scenario() -> None:
        job_id = fleet.submit(steps=3, crash_worker_at_step=1)
        started = 0

        def supervise() -> bool:  # what systemd would do: restart a worker that died
            nonlocal started
            if not any(p.poll() is None for p in fleet.workers.values()):
                started += 1
                fleet.worker(f"w-{started}")
            return bool(fleet.job(job_id)["state"] == "dead")

        await until(supervise, within_s=90)
        got = fleet.job(job_id)
        assert got["attempts"] == fleet.max_runs
        assert got["error"].startswith(f"delivered {fleet.max_runs + 1} times, 2 runs ended")
        assert [p.returncode for p in fleet.workers.values()][: fleet.max_runs] == [70, 70]
        fine = fleet.submit(steps=1)  # the queue goes on
        assert (await fleet.ended(fine))["state"] == "succeeded"

    asyncio.run(scenario())


def test_a_hub_on_nats_refuses_unknown_types_and_bad_parameters(fleet: Fleet) -> None:
    r = fleet.client.post("/v1/jobs", json={"type": "m2n3", "params": {}}, headers=fleet.auth)
    assert r.status_code == 422 and "is not a job type" in r.json()["detail"]
    r = fleet.client.post(
        "/v1/jobs", json={"type": "selftest", "params": {"steps": -1}}, headers=fleet.auth
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("params.steps:")


def test_a_worker_that_loses_nats_mid_job_finishes_it_and_never_runs_it_twice(
    tmp_path: Path, nats_url: str
) -> None:
    """A NATS server of the test's own (the shared one must not be stopped): it dies while
    the job runs; the job's outcome still lands in the database, and when NATS is back the
    message is acknowledged (the client's buffered ack, or a redelivery that finds the job
    finished) without the job running again."""
    server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(server).exists():
        missing("nats-server is not installed (needed to stop a NATS of the test's own)")
    port, monitor = free_port(), free_port()
    url = f"nats://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        cmd = [server, "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)]
        cmd += ["-sd", str(tmp_path / "js")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        asyncio.run(until(lambda: port_open(port)))
        return proc

    nats_proc = start()
    stream = f"TEST_LOST_{uuid.uuid4().hex[:8].upper()}"
    settings = HubSettings.create(tmp_path / "hub", nats_url=url, jobs_stream=stream)
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with TestClient(create_app(settings)) as client:
            f = Fleet(client, settings, url, stream, workers=workers)
            f.worker("w-alone")
            job_id = f.submit(steps=40, step_seconds=0.1)

            async def scenario() -> None:
                await until(lambda: f.job(job_id)["progress"] > 0.1)
                nats_proc.kill()  # NATS gone mid-job: heartbeats and the ack fail
                nats_proc.wait()
                got = await f.ended(job_id)
                assert got["state"] == "succeeded" and got["attempts"] == 1, got

            asyncio.run(scenario())
            nats_proc = start()  # back, on the same port and store
            asyncio.run(until(lambda: _stream_messages(monitor) == 0, within_s=60))
            assert f.job(job_id)["attempts"] == 1  # not run again
            assert f.workers["w-alone"].poll() is None
            for proc in f.workers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
    finally:  # the hub has shut down (its NATS connection closed) before NATS goes
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
        nats_proc.kill()
        nats_proc.wait()


def _stream_messages(monitor: int) -> int:
    """Messages in the server's streams, from its monitoring endpoint (/jsz)."""
    doc = httpx.get(f"http://127.0.0.1:{monitor}/jsz", timeout=5).json()
    return int(doc["messages"])
