"""Proof reports: the JSON facts match what was uploaded (gaps, anomalies, models, drift,
coverage, checkpoint), and the PDF drawn from them renders to a real page (pdftoppm).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from attestation.microproof import AnomalySummary, DriftTest, Gap, ModelRef, SourceGap
from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.conftest import missing
from tests.hubkit import Device, body, register_software

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, where hubkit devices start
MODEL = ModelRef("pump-pca", bytes(range(32)), "3")
SILENT = SourceGap("plc-2", T0 + 2_000_000, T0 + 9_000_000, "timeout")


@pytest.fixture
def hub(tmp_path: Path) -> tuple[TestClient, HubSettings]:
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    return TestClient(create_app(s), raise_server_exceptions=False), s


def _upload_plant(client: TestClient, s: HubSettings) -> str:
    dev = Device()
    utid = register_software(client, s, dev, "press-1", "plant-1")
    calm = AnomalySummary(0, 0.3, 1.0)
    drift = DriftTest("ks", 0.12, 0.4, True)
    proofs = [dev.window(10, model=MODEL, anomaly=calm, drift=drift)[:2]]
    proofs.append(
        dev.window(
            10,
            skip=3,
            gaps=(Gap(10, 12, "agent restart"),),
            model=MODEL,
            anomaly=AnomalySummary(4, 3.5, 1.0),
            source_gaps=(SILENT,),
        )[:2]
    )
    proofs.append(dev.window(10, model=MODEL, anomaly=calm)[:2])
    assert (
        client.post(
            "/v1/proofs", content=body(*proofs), headers={"content-type": "application/cbor"}
        ).status_code
        == 200
    )
    other = Device()  # another site: not in the report
    register_software(client, s, other, "elsewhere", "plant-2")
    return utid


def test_the_json_report_states_what_was_signed(hub: tuple[TestClient, HubSettings]) -> None:
    client, s = hub
    utid = _upload_plant(client, s)
    r = client.get(
        "/v1/sites/plant-1/report",
        params={"from": "2023-11-14T22:00:00Z", "to": "2023-11-14T23:00:00Z"},
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["totals"] == {
        "devices": 1, "windows": 3, "readings": 30, "gap_records": 1, "readings_lost": 3,
        "anomalous_windows": 1, "source_gaps": 1,
    }  # fmt: skip
    (dev,) = doc["devices"]
    assert dev["utid"] == utid and dev["name"] == "press-1"
    assert dev["gaps"] == [{"window": 1, "first": 10, "last": 12, "reason": "agent restart"}]
    assert dev["source_gaps"] == [
        {
            "window": 1, "source": "plc-2", "from": "2023-11-14T22:13:20.002+00:00",
            "to": "2023-11-14T22:13:20.009+00:00", "first_ts_ns": SILENT.first_ts_ns,
            "last_ts_ns": SILENT.last_ts_ns, "reason": "timeout",
        }
    ]  # fmt: skip
    (event,) = dev["anomalies"]
    assert (event["window"], event["anomalous_rows"], event["max_score"]) == (1, 4, 3.5)
    assert event["model_sha256"] == MODEL.sha256.hex()
    assert dev["models"] == [
        {"sha256": MODEL.sha256.hex(), "id": "pump-pca", "version": "3",
         "fleet_version": None, "job": None}  # not a fleet (TUF) model
    ]  # fmt: skip
    assert dev["drift_tests"] == [
        {"window": 0, "test": "ks", "statistic": 0.12, "p_value": 0.4, "drifted": True}
    ]
    assert dev["drifted_windows"] == 1
    assert 0 < dev["coverage_pct"] < 100
    assert sum(n for _, n in dev["readings_per_hour"]) == 30
    assert doc["checkpoint"]["size"] == 3
    assert doc["checkpoint"]["note"].startswith("factoryops.local/hub-log\n3\n")


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"from": "2023-11-15T00:00:00Z", "to": "2023-11-14T00:00:00Z"}, "from: must be before to"),
        ({"from": "yesterday", "to": "2023-11-14T00:00:00Z"}, "from: 'yesterday' is not ISO 8601"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2023-11-14T00:00:00Z"}, "to: a report covers"),
        ({"from": "2023-11-14T22:00:00Z"}, "query.to: Field required"),
    ],
)
def test_bad_report_parameters_are_named(
    hub: tuple[TestClient, HubSettings], params: dict[str, str], where: str
) -> None:
    client, s = hub
    _upload_plant(client, s)
    r = client.get("/v1/sites/plant-1/report", params=params)
    assert r.status_code == 422 and where in r.json()["detail"]
    missing_site = client.get(
        "/v1/sites/nowhere/report",
        params={"from": "2023-11-14T00:00:00Z", "to": "2023-11-15T00:00:00Z"},
    )
    assert missing_site.status_code == 404 and missing_site.json()["error"] == "unknown_site"


def test_the_pdf_renders_to_real_pages(hub: tuple[TestClient, HubSettings], tmp_path: Path) -> None:
    """Every page renders, nothing runs into the right margin (the old cover's checkpoint
    line ran off the page), pages are numbered, the cover explains the figures, says how to
    check the report, and prints the SHA-256 of the signed JSON twin."""
    if shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None:
        missing("pdftoppm and pdftotext are not installed (apt install poppler-utils)")
    client, s = hub
    _upload_plant(client, s)
    r = client.get(
        "/v1/sites/plant-1/report",
        params={"from": "2023-11-14T22:00:00Z", "to": "2023-11-14T23:00:00Z", "format": "pdf"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(r.content)
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 3  # the cover, how to check, one device
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for page in pages:
        img = np.asarray(Image.open(page).convert("L"))
        dark = int((img < 128).sum())
        assert dark > 200, f"{page.name} looks blank"  # at least its footer and some text
        # the right margin is 18 mm; its outer 12 mm must stay blank on every page
        edge = img[:, img.shape[1] - round(img.shape[1] * 12 / 210) :]
        assert int((edge < 200).sum()) == 0, f"{page.name}: something runs off the page"
        shutil.copy(page, artifacts / f"report-{page.name}")
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert f"page 1 of {len(pages)}" in text and f"page {len(pages)} of {len(pages)}" in text
    assert "How to check this report" in text and "factoryops verify-report" in text
    assert "readings the gap records admit were lost" in text  # figures explained
    assert r.headers["x-factoryops-report-sha256"] in text.replace("\n", "")
    cp = client.get("/v1/log/checkpoint").text
    root_line = cp.splitlines()[2]  # the note's root, base64: printed in full, wrapped
    assert root_line in text


def test_the_json_twin_is_signed_and_a_changed_byte_is_refused(
    hub: tuple[TestClient, HubSettings], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from factoryops.cli import cli

    client, s = hub
    _upload_plant(client, s)
    params = {"from": "2023-11-14T22:00:00Z", "to": "2023-11-14T23:00:00Z"}
    r = client.get("/v1/sites/plant-1/report", params=params)
    report = tmp_path / "r.json"
    report.write_bytes(r.content)
    sig = tmp_path / "r.json.cose"
    sig.write_bytes(base64.b64decode(r.headers["x-factoryops-report-signature"]))
    key = tmp_path / "hub-log-key.pem"
    key.write_text(client.get("/v1/log/key").json()["pem"])
    ok = CliRunner().invoke(cli, ["verify-report", str(report), "--trust", str(key)])
    assert ok.exit_code == 0 and r.headers["x-factoryops-report-sha256"] in ok.output, ok.output
    report.write_bytes(r.content.replace(b'"readings":30', b'"readings":31'))
    bad = CliRunner().invoke(cli, ["verify-report", str(report), "--trust", str(key)])
    assert bad.exit_code == 1 and "INVALID: signature:" in bad.output, bad.output


def test_factoryops_report_downloads_both_formats(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from cloud_sync.server import HubServer
    from factoryops.cli import cli

    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    server = HubServer(s).start()
    try:
        _upload_plant(TestClient(create_app(s)), s)
        args = ["report", "--hub", server.url, "--site", "plant-1"]
        args += ["--from", "2023-11-14T22:00:00", "--to", "2023-11-14T23:00:00"]
        for name in ("r.json", "r.pdf"):
            result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / name)])
            assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "r.json").read_text())["totals"]["readings"] == 30
        assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF-")
        assert (tmp_path / "r.json.cose").exists()  # the PDF comes with its signed twin
        key = tmp_path / "hub-log-key.pem"
        key.write_text(httpx.get(f"{server.url}/v1/log/key").json()["pem"])
        check = CliRunner().invoke(
            cli, ["verify-report", str(tmp_path / "r.json"), "--trust", str(key)]
        )
        assert check.exit_code == 0 and "VALID" in check.output, check.output
        bad = CliRunner().invoke(
            cli, [*args[:4], "nowhere", *args[5:], "--out", str(tmp_path / "x.pdf")]
        )
        assert bad.exit_code != 0 and "unknown_site" in str(bad.exception)
    finally:
        server.stop()


def test_the_hub_lists_the_silent_sources_its_proofs_state(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    utid = _upload_plant(client, s)
    r = client.get("/v1/source-gaps", params={"utid": utid})
    assert r.status_code == 200, r.text
    assert r.json()["source_gaps"] == [
        {
            "utid": utid,
            "window": 1,
            "source": "plc-2",
            "first_ts_ns": SILENT.first_ts_ns,
            "last_ts_ns": SILENT.last_ts_ns,
            "reason": "timeout",
        }
    ]
    page = client.get(f"/devices/{utid}")
    assert page.status_code == 200
    assert 'id="source-gaps"' in page.text and "plc-2" in page.text and "timeout" in page.text


def test_factoryops_report_reads_a_closed_hub_with_an_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub without --open-reads refuses an anonymous report with a hint, and serves it to
    an operator's key given by --api-key or by FACTORYOPS_API_KEY."""
    import json
    import time

    from click.testing import CliRunner

    from cloud_sync.access import Access
    from cloud_sync.server import HubServer
    from cloud_sync.storage import Store
    from factoryops.cli import cli

    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True)
    server = HubServer(s).start()
    try:
        _upload_plant(TestClient(create_app(s)), s)
        store = Store.open(s.db_url)
        access = Access(store.engine, s.admin_token, time.time_ns)
        access.create_operator("auditor", "correct horse battery", {"plant-1": "viewer"}, "test")
        key = access.create_api_key("auditor", "test")
        store.close()
        args = ["report", "--hub", server.url, "--site", "plant-1"]
        args += ["--from", "2023-11-14T22:00:00", "--to", "2023-11-14T23:00:00"]
        out = tmp_path / "r.json"
        monkeypatch.delenv("FACTORYOPS_API_KEY", raising=False)
        anonymous = CliRunner().invoke(cli, [*args, "--out", str(out)])
        assert anonymous.exit_code != 0 and not out.exists()
        assert "--api-key" in anonymous.exception.hint  # type: ignore[union-attr]  # a HubError
        assert CliRunner().invoke(cli, [*args, "--api-key", key, "--out", str(out)]).exit_code == 0
        assert json.loads(out.read_text())["totals"]["readings"] == 30
        out.unlink()
        by_env = CliRunner().invoke(
            cli, [*args, "--out", str(out)], env={"FACTORYOPS_API_KEY": key}
        )
        assert by_env.exit_code == 0, by_env.output
        assert json.loads(out.read_text())["totals"]["readings"] == 30
    finally:
        server.stop()
