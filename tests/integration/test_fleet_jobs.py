"""The fleet loop on a real hub (HTTP, in-process job runner, TUF repository): an M2N2 job
merges two sites, an RND1 study tunes and publishes the merged model, a gateway's update
client installs it, and its scores name the fleet version and the producing job. RND1
studies live in the hub's database and resume; bad parameters are refused by name.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import httpx
import optuna
import pytest

from agent.inference import OnnxScorer
from agent.updates import ModelUpdates, install_trusted_root
from attestation.reading import Reading
from cloud_sync.jobs.rnd1 import optuna_storage_url
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from cloud_sync.updates import init_repository
from hil_tests.pump_variants import write_setpoint_sweep, write_variant
from hil_tests.training import simulated_normal, write_skab_csv
from models_onnx.recipes import build_pca
from tests.waiting import until

TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


class Hub:
    def __init__(self, server: HubServer) -> None:
        self.url = server.url
        self.auth = {"authorization": f"Bearer {server.settings.admin_token}"}

    def submit(self, type_: str, **params: Any) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/v1/jobs", json={"type": type_, "params": params}, headers=self.auth
        )
        assert r.status_code == 201, r.text
        return self.wait(int(r.json()["id"]))

    def wait(self, job_id: int) -> dict[str, Any]:
        got: dict[str, Any] = {}

        def done() -> bool:
            got.update(httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=self.auth).json())
            return got["state"] in TERMINAL

        asyncio.run(until(done, within_s=300))
        return got


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("fleet")
    settings = HubSettings.create(tmp / "hub")
    data = settings.data_dir / "datasets"
    for name in ("pump-a", "pump-b"):
        write_variant(data / name, name, runs=3, normal_s=420, fault_s=120, tail_s=40)
    write_skab_csv(data / "demo-normal.csv", 120, seed=5)
    write_setpoint_sweep(data / "sweep.csv", "pump-a", points=120)
    root = init_repository(
        settings.data_dir / "tuf", tmp / "offline", settings.data_dir / "tuf-keys"
    )
    with HubServer(settings) as server:
        yield Hub(server), settings, root, tmp


def test_m2n2_then_rnd1_publish_a_model_the_gateway_installs_with_its_job(hub: Any) -> None:
    h, _, root, tmp = hub
    merged = h.submit(
        "m2n2", sites={"pump-a": "pump-a", "pump-b": "pump-b"}, generations=15, archive_size=4
    )
    assert merged["state"] == "succeeded", merged.get("traceback")
    result = merged["result"]
    assert set(result["per_site"]) == {"pump-a", "pump-b"}
    assert {"merged_score", "best_single_score", "averaged_score"} <= set(result)
    tuned = h.submit(
        "rnd1.tune", model_job=merged["id"], site="pump-a", n_trials=6,
        publish_channel="fleet", calibration_csv="datasets/demo-normal.csv",
        publish_config_site="demo",
    )  # fmt: skip
    assert tuned["state"] == "succeeded", tuned.get("traceback")
    out = tuned["result"]
    assert len(out["trials"]) == 6 and 0.0 <= out["held_out_f1"] <= 1.0
    assert out["published"]["version"] == 1
    assert out["published_config"]["paths"] == ["config/demo/scoring.toml"]
    page = httpx.get(f"{h.url}/jobs/{tuned['id']}", headers=h.auth).text
    assert "<svg" in page and "Selection F1 per trial" in page
    assert "fleet" in httpx.get(f"{h.url}/updates", headers=h.auth).text

    signals, x = simulated_normal(60, seed=5)
    _, first = build_pca(x, signals, tmp / "gateway", model_id="factory")
    agent = ModelUpdates(tmp / "gateway" / "updates", f"{h.url}/tuf", "autoencoder", "fleet", first)
    install_trusted_root(agent.state_dir, root.read_bytes())
    live = [
        Reading(i * 8 + j, 1_700_000_000_000_000_000 + i * 10**8, s, float(v), "")
        for i, row in enumerate(simulated_normal(20, seed=9)[1])
        for j, (s, v) in enumerate(zip(signals, row, strict=True))
    ]
    done = agent.check(live)
    assert done.outcome == "installed", done
    ref = OnnxScorer.open(agent.active).score_window(live).model
    assert (ref.fleet_version, ref.job) == (1, tuned["id"])


def test_a_setpoint_study_meets_its_constraints_and_resumes_from_the_database(hub: Any) -> None:
    h, *_ = hub
    first = h.submit(
        "rnd1.setpoint", sweep_csv="sweep.csv", min_flow_lpm=90.0, min_npsh_margin_m=7.0,
        n_trials=12, study="pump-a-setpoint", publish_site="demo",
    )  # fmt: skip
    assert first["state"] == "succeeded", first.get("traceback")
    best = first["result"]["best"]
    assert best["flow_lpm"] >= 90.0 and best["npsh_margin_m"] >= 7.0
    assert first["result"]["published"]["paths"] == ["config/demo/setpoint.toml"]
    again = h.submit(
        "rnd1.setpoint", sweep_csv="sweep.csv", min_flow_lpm=90.0, min_npsh_margin_m=7.0,
        n_trials=20, study="pump-a-setpoint",
    )  # fmt: skip
    assert len(again["result"]["trials"]) == 20  # 12 kept, 8 more run
    page = httpx.get(f"{h.url}/jobs/{again['id']}", headers=h.auth).text
    assert "Setpoints tried" in page


def test_fleet_jobs_with_bad_input_are_refused_or_failed_with_the_reason(hub: Any) -> None:
    h, *_ = hub
    r = httpx.post(
        f"{h.url}/v1/jobs",
        json={"type": "m2n2", "params": {"sites": {"a": "../../etc", "b": "x"}}},
        headers=h.auth,
    )
    assert r.status_code == 422 and "inside the hub's data directory" in r.json()["detail"]
    r = httpx.post(
        f"{h.url}/v1/jobs",
        json={"type": "rnd1.tune", "params": {"model_job": 1, "site": "a", "publish_channel": "f"}},
        headers=h.auth,
    )
    assert r.status_code == 422 and "calibration_csv" in r.json()["detail"]
    missing = h.submit("m2n2", sites={"pump-a": "pump-a", "gone": "nowhere"}, generations=1)
    assert missing["state"] == "failed" and "site gone: no folder" in missing["error"]
    no_model = h.submit("rnd1.tune", model_job=9999, site="pump-a")
    assert no_model["state"] == "failed" and "left no merged model" in no_model["error"]
    impossible = h.submit(
        "rnd1.setpoint", sweep_csv="sweep.csv", min_flow_lpm=5000.0, min_npsh_margin_m=7.0,
        n_trials=5,
    )  # fmt: skip
    assert impossible["state"] == "failed" and "no feasible setpoint" in impossible["error"]


def test_two_workers_share_one_study_on_postgresql(postgres_url: str) -> None:
    storage = optuna.storages.RDBStorage(optuna_storage_url(postgres_url))
    name = f"shared-{uuid.uuid4().hex}"
    optuna.create_study(study_name=name, storage=storage)

    def work() -> None:  # a worker of its own: its own connection to the study
        mine = optuna.storages.RDBStorage(optuna_storage_url(postgres_url))
        study = optuna.load_study(study_name=name, storage=mine)
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=5)
        mine.engine.dispose()

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 10
    optuna.delete_study(study_name=name, storage=storage)
    storage.engine.dispose()
