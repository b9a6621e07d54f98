"""No 5xx from what a client sends, and a JSON 500 with a request id for what is ours.

Found by issue 16's fuzzing run: ``GET /v1/devices/{utid}/readings/9223372036854775808/receipt``
answered a plain-text 500 (SQLite's OverflowError), and a reading whose value is NaN had no
receipt at all (500 "Out of range float values are not JSON compliant").
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient

from attestation import load_anchors, receipt_from_json, report_receipt
from attestation.localports import free_port
from cloud_sync.app import create_app, hub_app
from cloud_sync.errors import ApiError, HubFault
from cloud_sync.routes import HubDeps
from cloud_sync.settings import HubSettings
from tests.hubkit import Device, body

CBOR = {"content-type": "application/cbor"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, HubSettings]]:
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        yield client, s


def _device(client: TestClient, s: HubSettings) -> tuple[Device, str]:
    dev = Device()
    r = client.post(
        "/v1/devices",
        json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": "gw-e"},
        headers={"authorization": f"Bearer {s.admin_token}"},
    )
    assert r.status_code == 201, r.text
    return dev, str(r.json()["utid"])


@pytest.mark.parametrize("seq", ["9223372036854775808", "-1", str(2**70), "1e3", "x"])
def test_a_seq_out_of_range_is_a_json_4xx(hub: tuple[TestClient, HubSettings], seq: str) -> None:
    client, s = hub
    dev, utid = _device(client, s)
    assert client.post("/v1/proofs", content=body(dev.window(2)[:2]), headers=CBOR).is_success
    r = client.get(f"/v1/devices/{utid}/readings/{seq}/receipt")
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_reading_with_a_non_finite_value_has_a_receipt_that_verifies(
    hub: tuple[TestClient, HubSettings], value: float
) -> None:
    client, s = hub
    dev, utid = _device(client, s)
    r = client.post(
        "/v1/proofs", content=body(dev.window(3, values=(1.0, value, 2.0))[:2]), headers=CBOR
    )
    assert r.status_code == 200, r.text
    r = client.get(f"/v1/devices/{utid}/readings/1/receipt")
    assert r.status_code == 200, r.text
    doc = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert doc["reading"]["value"] in {"NaN", "Infinity", "-Infinity"}
    verdict = report_receipt(receipt_from_json(doc), load_anchors([s.data_dir / "fleet-ca.pem"]))
    assert verdict.valid, verdict.error


def test_a_reading_with_a_text_value_has_a_receipt_that_verifies(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """Text values as ARCHITECTURE.md pins them: a JSON string marked ``value_type: text``,
    served by the hub's receipt route (only the offline builder was tested)."""
    client, s = hub
    dev, utid = _device(client, s)
    r = client.post(
        "/v1/proofs", content=body(dev.window(3, values=(1.0, "RUNNING", 2.0))[:2]), headers=CBOR
    )
    assert r.status_code == 200, r.text
    r = client.get(f"/v1/devices/{utid}/readings/1/receipt")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["reading"]["value"], doc["reading"]["value_type"]) == ("RUNNING", "text")
    verdict = report_receipt(receipt_from_json(doc), load_anchors([s.data_dir / "fleet-ca.pem"]))
    assert verdict.valid, verdict.error


def test_an_unexpected_exception_is_a_json_500_with_a_request_id_in_the_log(
    hub: tuple[TestClient, HubSettings],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault of ours (here a store that fails, injected) is answered as JSON naming a
    request id, and that id leads to the traceback in the hub's log."""
    _, s = hub
    deps = HubDeps.open(s)

    def broken() -> dict[str, int]:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(deps.store, "counts", broken)
    with (
        TestClient(hub_app(deps), raise_server_exceptions=False) as client,
        caplog.at_level(logging.ERROR, logger="cloud_sync.app"),
    ):
        r = client.get("/healthz")
    assert r.status_code == 500
    doc = _as_documented(client, "/healthz", "get", r)
    assert doc["error"] == "internal"
    assert "the disk went away" not in doc["detail"]  # what is ours stays in the log
    request_id = doc["request_id"]
    assert r.headers["x-request-id"] == request_id
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert logged, caplog.text
    assert logged[0].exc_info is not None
    assert "the disk went away" in caplog.text


def test_a_fault_in_the_upload_route_is_the_same_json_500_with_its_headers_and_metrics(
    hub: tuple[TestClient, HubSettings],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``POST /v1/proofs`` is served past FastAPI's routing (``_Direct`` in app.py, for the
    fleet's CPU): its faults and refusals are answered as every route's are, with the same
    security headers, and its requests are counted under their template."""
    _, s = hub
    deps = HubDeps.open(s)

    def broken(*_: object, **__: object) -> object:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(deps.ingestor, "check_many", broken)
    dev = Device()
    with (
        TestClient(hub_app(deps), raise_server_exceptions=False) as client,
        caplog.at_level(logging.ERROR, logger="cloud_sync.app"),
    ):
        refused = client.post("/v1/proofs", content=b"{}", headers=CBOR)
        r = client.post("/v1/proofs", content=body(dev.window(2)[:2]), headers=CBOR)
        metrics = client.get("/metrics").text
    assert refused.status_code == 400
    assert _as_documented(client, "/v1/proofs", "post", refused)["error"] == "malformed_body"
    assert r.status_code == 500
    doc = _as_documented(client, "/v1/proofs", "post", r)
    assert (doc["error"], r.headers["x-request-id"]) == ("internal", doc["request_id"])
    assert any(doc["request_id"] in rec.getMessage() for rec in caplog.records), caplog.text
    for answer in (refused, r):
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
    for status in ("400", "500"):
        assert f'method="POST",route="/v1/proofs",status="{status}"' in metrics


def _as_documented(client: TestClient, path: str, method: str, r: httpx.Response) -> Any:
    """The answer's JSON body, checked against the schema the API document gives its status
    on that route (``$ref``s resolved in the document)."""
    assert r.headers["content-type"] == "application/json", r.text
    doc = client.app.openapi()  # type: ignore[attr-defined]  # the hub's FastAPI app
    schema = doc["paths"][path][method]["responses"][str(r.status_code)]["content"]
    answer = r.json()
    jsonschema.validate(
        answer, {**schema["application/json"]["schema"], "components": doc["components"]}
    )
    return answer


HUB = Path(__file__).resolve().parents[2] / "cloud_sync"


def _statuses_raised(cls: str) -> set[tuple[str, int]]:
    """(module, status) of every ``cls(<int literal>, ...)`` in the hub's code."""
    found = set()
    for path in HUB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == cls
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, int)
            ):
                found.add((str(path.relative_to(HUB)), node.args[0].value))
    return found


def test_every_5xx_the_hub_can_send_is_documented_as_a_fault_body(tmp_path: Path) -> None:
    """A 5xx comes from a ``HubFault`` or from any exception nothing handled (500); each
    status is documented on every route with ``FaultBody`` (error, detail, request_id). The
    job queue's 503 was raised as an ``ApiError``, which refuses a 5xx: a plain 500 came out."""
    refusals = {(module, s) for module, s in _statuses_raised("ApiError") if s >= 500}
    assert refusals == set(), "a 5xx is the hub's fault: raise HubFault"
    faults = {s for _, s in _statuses_raised("HubFault")} | {500}
    doc = create_app(HubSettings.create(tmp_path / "hub")).openapi()
    body = doc["components"]["schemas"]["FaultBody"]
    assert set(body["required"]) == {"error", "detail", "request_id"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status in faults:
                content = op["responses"][str(status)]["content"]
                ref = content["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/FaultBody", (method, path, status)


def test_a_job_queue_that_cannot_be_reached_is_a_json_503(tmp_path: Path) -> None:
    """NATS down: the submission answers 503 ``queue_unavailable`` as documented, within the
    queue's connect timeout (it waited for ever, nats-py retrying the first connection)."""
    s = HubSettings.create(
        tmp_path / "hub", allow_software_keys=True, nats_url=f"nats://127.0.0.1:{free_port()}"
    )
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        r = client.post(
            "/v1/jobs",
            json={"type": "selftest", "params": {"steps": 1}},
            headers={"authorization": f"Bearer {s.admin_token}"},
        )
        assert r.status_code == 503, r.text
        doc = _as_documented(client, "/v1/jobs", "post", r)
        assert doc["error"] == "queue_unavailable"
        assert r.headers["x-request-id"] == doc["request_id"]
        assert (
            client.get("/v1/jobs/1", headers={"authorization": f"Bearer {s.admin_token}"}).json()[
                "state"
            ]
            == "failed"
        )  # stored, said not queued: nothing runs half-submitted


def test_an_api_error_never_carries_a_5xx() -> None:
    """A 5xx is the hub's fault, not a refusal of the client's request: a HubFault."""
    with pytest.raises(ValueError, match="HubFault"):
        ApiError(500, "corrupt_store", "x")
    fault = HubFault(503, "unavailable", "try again")
    assert fault.status == 503
    with pytest.raises(ValueError, match="ApiError"):
        HubFault(404, "x", "y")


@pytest.mark.parametrize(
    "url",
    [
        f"/v1/log/proof/consistency?from=1&to={2**70}",
        "/v1/log/proof/consistency?from=-5&to=-1",
        f"/v1/log/proof/inclusion?index={2**64}&size={2**64 + 1}",
        "/v1/log/proof/inclusion?index=-1&size=0",
        "/v1/anomalies?limit=99999999999999999999999",
        f"/v1/jobs/{2**70}",  # reached SQLite: a 500 (OverflowError) before
        "/v1/jobs/0",
        f"/jobs/{2**64}",
    ],
)
def test_path_and_query_parameters_out_of_range_are_json_4xx(
    hub: tuple[TestClient, HubSettings], url: str
) -> None:
    client, _ = hub
    r = client.get(url)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]
