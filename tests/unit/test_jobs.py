"""Fleet jobs without a broker: the lifecycle table, parameter validation, and the hub API
running jobs in process (submit, progress, failure with traceback, cancel, access)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_sync.app import create_app
from cloud_sync.jobs import JobEvent, JobState, advance
from cloud_sync.jobs.lifecycle import TERMINAL, IllegalTransition, sources
from cloud_sync.jobs.store import JobStore
from cloud_sync.jobs.types import JobRefused, default_job_types
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
from tests.waiting import until


def test_a_finished_job_never_moves_again() -> None:
    for state in TERMINAL:
        for event in JobEvent:
            with pytest.raises(IllegalTransition, match=state.value):
                advance(state, event)


def test_a_running_job_may_start_again_after_a_redelivery() -> None:
    assert advance(JobState.RUNNING, JobEvent.START) is JobState.RUNNING
    assert set(sources(JobEvent.SUCCEED)) == {JobState.RUNNING}


def test_unknown_type_and_bad_field_are_refused_by_name() -> None:
    types = default_job_types()
    with pytest.raises(JobRefused, match=r"'m3rge' is not a job type \(known: selftest"):
        types.validate("m3rge", {})
    with pytest.raises(JobRefused, match=r"params\.steps: Input should be greater"):
        types.validate("selftest", {"steps": 0})
    with pytest.raises(JobRefused, match=r"params\.colour: Extra inputs"):
        types.validate("selftest", {"colour": "red"})


def test_two_outcomes_race_and_only_the_first_is_kept(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'hub.db'}")
    jobs = JobStore(store.engine, time.time_ns)
    job = jobs.submit("selftest", {}, None, "test")
    assert jobs.start(job.id, "w1", 1) and jobs.start(job.id, "w2", 2)
    assert jobs.succeed(job.id, {"by": "w2"})
    assert not jobs.fail(job.id, "late w1")  # the loser learns it lost
    got = jobs.get(job.id)
    assert got is not None and got.state is JobState.SUCCEEDED and got.result == {"by": "w2"}
    store.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    s = HubSettings.create(tmp_path / "hub")
    with TestClient(create_app(s), raise_server_exceptions=False) as client:  # runs lifespan
        yield client, {"authorization": f"Bearer {s.admin_token}"}


def _finished(client: TestClient, auth: dict[str, str], job_id: int) -> dict[str, object]:
    got: dict[str, object] = {}

    def done() -> bool:
        got.update(client.get(f"/v1/jobs/{job_id}", headers=auth).json())
        return got["state"] in {s.value for s in TERMINAL}

    asyncio.run(until(done))
    return got


def _running_selftest(client: TestClient, auth: dict[str, str], steps: int) -> dict[str, Any]:
    """Submit a selftest of ``steps`` 10 ms steps; return it once it reports progress."""
    job: dict[str, Any] = client.post(
        "/v1/jobs",
        json={"type": "selftest", "params": {"steps": steps, "step_seconds": 0.01}},
        headers=auth,
    ).json()
    asyncio.run(
        until(lambda: client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["progress"] > 0)
    )
    return job


def test_a_job_runs_in_the_hub_without_a_broker(hub: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = hub
    r = client.post("/v1/jobs", json={"type": "selftest", "params": {"steps": 3}}, headers=auth)
    assert r.status_code == 201, r.text
    got = _finished(client, auth, r.json()["id"])
    assert got["state"] == "succeeded" and got["progress"] == 1.0
    assert got["result"] == {"steps": 3, "pid": got["result"]["pid"]}  # type: ignore[index]  # JSON
    assert [x["line"] for x in got["logs"]] == ["counted 3 steps"]  # type: ignore[attr-defined]  # JSON
    page = client.get(f"/jobs/{got['id']}", headers=auth)
    assert "succeeded" in page.text and "/static/refresh.js" not in page.text  # done: still


def test_jobs_run_when_the_apps_lifespan_starts_again(tmp_path: Path) -> None:
    """An app whose lifespan runs twice (TestClient, schemathesis' ASGI calls) runs jobs in
    the second too: the runner's pool was shut down with the first, and every submission
    after it was a 500 ("cannot schedule new futures after shutdown")."""
    s = HubSettings.create(tmp_path / "hub")
    auth = {"authorization": f"Bearer {s.admin_token}"}
    app = create_app(s)
    for _ in range(2):
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.post("/v1/jobs", json={"type": "selftest", "params": {}}, headers=auth)
            assert r.status_code == 201, r.text
            assert _finished(client, auth, r.json()["id"])["state"] == "succeeded"


def test_a_job_that_raises_is_failed_with_its_traceback_and_the_next_runs(
    hub: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = hub
    bad = client.post(
        "/v1/jobs", json={"type": "selftest", "params": {"fail_at_step": 1}}, headers=auth
    ).json()
    good = client.post("/v1/jobs", json={"type": "selftest", "params": {}}, headers=auth).json()
    failed = _finished(client, auth, bad["id"])
    assert failed["state"] == "failed"
    assert failed["error"] == "RuntimeError: selftest asked to fail at step 1"
    assert "Traceback" in str(failed["traceback"]) and "_selftest" in str(failed["traceback"])
    assert _finished(client, auth, good["id"])["state"] == "succeeded"


def test_a_job_that_would_kill_the_hub_is_refused_inside_it(
    hub: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = hub
    r = client.post(
        "/v1/jobs", json={"type": "selftest", "params": {"crash_worker_at_step": 0}}, headers=auth
    )
    got = _finished(client, auth, r.json()["id"])
    assert got["state"] == "failed" and "needs a worker process" in str(got["error"])


def test_unknown_type_and_bad_params_are_refused_with_a_reason(
    hub: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = hub
    r = client.post("/v1/jobs", json={"type": "nope", "params": {}}, headers=auth)
    assert r.status_code == 422 and r.json()["error"] == "unknown_job_type"
    r = client.post("/v1/jobs", json={"type": "selftest", "params": {"steps": "x"}}, headers=auth)
    assert r.status_code == 422
    assert r.json() == {
        "error": "invalid_params",
        "detail": "params.steps: Input should be a valid integer, unable to parse string as an"
        " integer",
    }
    assert client.get("/v1/jobs", headers=auth).json()["jobs"] == []  # nothing was stored


def test_cancel_stops_a_running_job_at_its_next_report(
    hub: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = hub
    job = _running_selftest(client, auth, 10_000)
    page = client.get(f"/jobs/{job['id']}", headers=auth)
    assert "/static/refresh.js" in page.text and "<progress" in page.text  # live page
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200, r.text
    got = _finished(client, auth, job["id"])
    assert got["state"] == "cancelled" and float(got["progress"]) < 1.0  # type: ignore[arg-type]  # JSON
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 409


def test_jobs_need_an_operator_and_fleet_jobs_the_admin(
    hub: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = hub
    assert client.post("/v1/jobs", json={"type": "selftest"}).status_code == 401
    client.post(
        "/v1/operators",
        json={"username": "vic", "password": "x" * 12, "roles": {"plant-1": "viewer"}},
        headers=auth,
    )
    key = client.post("/v1/operators/vic/api-keys", headers=auth).json()["api_key"]
    vic = {"authorization": f"Bearer {key}"}
    r = client.post("/v1/jobs", json={"type": "selftest", "site": "plant-1"}, headers=vic)
    assert r.status_code == 403
    job = client.post("/v1/jobs", json={"type": "selftest"}, headers=auth).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=vic).status_code == 404  # fleet-wide


def test_a_hub_that_stops_mid_job_runs_it_again_at_its_next_start(tmp_path: Path) -> None:
    s = HubSettings.create(tmp_path / "hub")
    auth = {"authorization": f"Bearer {s.admin_token}"}
    with TestClient(create_app(s)) as client:
        job = _running_selftest(client, auth, 400)
    # stopped: the job ended at its next progress report, its row still says running
    with TestClient(create_app(s)) as client:
        got = _finished(client, auth, job["id"])
    assert got["state"] == "succeeded" and got["attempts"] == 2
    assert any("interrupted" in str(x["line"]) for x in got["logs"])  # type: ignore[attr-defined]  # JSON


def test_a_hub_that_only_ingests_never_loads_the_fleet_jobs_models(tmp_path: Path) -> None:
    """onnxruntime, scikit-learn and SciPy (185 of an idle hub's 300 MiB) load when a fleet
    job first runs, not with the app (a fresh interpreter: this one has them already)."""
    import subprocess
    import sys

    code = (
        "import sys, pathlib; from cloud_sync.app import create_app;"
        " from cloud_sync.settings import HubSettings;"
        f" create_app(HubSettings.create(pathlib.Path({str(tmp_path)!r})));"
        " print(sorted(m for m in ('onnxruntime', 'sklearn', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
