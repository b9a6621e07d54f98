"""The hub's budget of request bodies held at once (cloud_sync/admission.py), and the agent's
side of an overloaded hub: its ``Retry-After`` is the least the uplink waits."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import zstandard
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import Backoff
from agent.uplink import retry_after
from cloud_sync.admission import BodyBudget, HeldBodies
from cloud_sync.app import create_app
from cloud_sync.errors import HubError
from cloud_sync.settings import HubLimits, HubSettings
from tests.hubkit import Device, body, register

CBOR = {"content-type": "application/cbor"}


def test_the_budget_charges_what_fits_and_refuses_the_rest_without_charging() -> None:
    counted: list[int] = []
    budget = BodyBudget(limit=100, retry_after_s=3, on_refusal=lambda: counted.append(1))
    assert budget.take(60) is None and budget.take(40) is None
    refusal = budget.take(1)
    assert refusal is not None and budget.held == 100  # nothing charged for a refusal
    assert (refusal.status, refusal.code, refusal.retry_after_s) == (503, "overloaded", 3)
    assert "100 bytes of request bodies (limit 100)" in refusal.detail
    budget.give(60)
    assert budget.take(60) is None and budget.held == 100
    assert budget.refused == 1 and len(counted) == 1


def test_a_budget_smaller_than_one_request_is_refused_naming_the_option() -> None:
    with pytest.raises(HubError, match="--body-budget-mib"):
        HubLimits(max_held_body_bytes=32 << 20)  # an upload may inflate to 64 MiB
    assert HubLimits().max_held_body_bytes >= HubLimits().max_decompressed_bytes


@given(st.binary(max_size=24))
def test_any_content_length_is_charged_within_zero_and_the_largest_body(value: bytes) -> None:
    held = HeldBodies(lambda *_: None, BodyBudget(1 << 30), 1 << 20)  # type: ignore[arg-type]  # an app never called here
    charged = held.declared({"headers": [(b"content-length", value)]})
    assert 0 <= charged <= 1 << 20
    assert held.declared({"headers": [(b"transfer-encoding", b"chunked")]}) == 1 << 20
    assert held.declared({"headers": []}) == 0


def test_an_upload_that_inflates_past_the_budget_is_answered_503_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        dev = Device()
        register("", settings.admin_token, dev, "gw-1", client)
        assert client.post("/v1/proofs", content=body(dev.window(5)[:2]), headers=CBOR).is_success
        budget = app.body_budget  # type: ignore[attr-defined]  # the hub's own FastAPI subclass
        window = body(dev.window(5)[:2])
        squeezed = zstandard.ZstdCompressor().compress(window)
        budget.held = budget.limit - len(squeezed) - len(window) // 2  # the compressed one fits
        caplog.set_level(logging.WARNING)
        r = client.post(
            "/v1/proofs", content=squeezed, headers={**CBOR, "content-encoding": "zstd"}
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "overloaded" and r.headers["retry-after"] == "2"
        assert r.json()["request_id"] == r.headers["x-request-id"]
        assert budget.held == budget.limit - len(squeezed) - len(window) // 2  # given back
        assert not [x for x in caplog.records if x.exc_info]  # no traceback: not a failure
        metrics = client.get(
            "/metrics", headers={"authorization": f"Bearer {settings.admin_token}"}
        )
        assert "factoryops_hub_requests_shed_total 1.0" in metrics.text  # counted as shed
        budget.held = 0
        again = client.post(
            "/v1/proofs", content=squeezed, headers={**CBOR, "content-encoding": "zstd"}
        )
        assert again.status_code == 200, again.text  # the same window, once there is room


@pytest.mark.parametrize(
    ("header", "seconds"), [("2", 2.0), (" 30 ", 30.0), (None, 0.0), ("Fri, 31 Dec 1999", 0.0)]
)
def test_retry_after_is_read_in_seconds(header: str | None, seconds: float) -> None:
    assert retry_after(header) == seconds


@given(st.integers(0, 40), st.floats(0, 1000), st.integers(0, 2**32))
def test_the_uplink_waits_at_least_what_the_hub_said(attempt: int, told: float, seed: int) -> None:
    backoff = Backoff()
    delay = backoff.delay_told(attempt, random.Random(seed), told)
    drawn = backoff.delay(attempt, random.Random(seed))  # what it waits when told nothing
    capped = min(told, backoff.cap_s)
    if capped > drawn:
        assert capped <= delay < 2 * capped  # spread over as long again
    else:
        assert delay == drawn


def test_the_api_document_names_retry_after_on_every_503(tmp_path: Path) -> None:
    doc = create_app(HubSettings.create(tmp_path / "hub", allow_software_keys=True)).openapi()
    answers = [op["responses"]["503"] for ops in doc["paths"].values() for op in ops.values()]
    assert answers and all("Retry-After" in a.get("headers", {}) for a in answers)
    assert "overloaded" in doc["paths"]["/v1/proofs"]["post"]["responses"]["503"]["description"]
