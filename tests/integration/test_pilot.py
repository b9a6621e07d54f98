"""The pilot sandbox (issue 23, item 5): a plant CSV through the model, the proof pipeline
and a receipt checked offline, driven with Streamlit's AppTest against a real hub, and the
page served by `factoryops pilot` once in real Chromium.

The CSV is SYNTHETIC, made here: three coupled signals, a level shift in the last quarter
(labelled), so the page has something real to find.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from attestation.localports import free_port
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from tests.browser import launch, require_chromium

pytestmark = pytest.mark.timeout(300)
APP_FILE = str(Path(__file__).resolve().parents[2] / "factoryops" / "pilot_app.py")


def _plant_csv(path: Path, rows: int = 800) -> Path:
    rng = np.random.default_rng(7)
    t = np.arange(rows)
    flow = 50 + 5 * np.sin(t / 40) + rng.normal(0, 0.3, rows)
    pressure = 2 + 0.04 * flow + rng.normal(0, 0.02, rows)
    temp = 40 + 0.1 * flow + rng.normal(0, 0.1, rows)
    fault = t >= rows * 3 // 4
    pressure[fault] += 0.6  # a stuck-open bypass: pressure no longer follows flow
    lines = ["datetime;Flow;Pressure;Temp;anomaly"]
    lines += [
        f"2026-01-01 00:{i // 60 % 60:02d}:{i % 60:02d};{flow[i]:.4f};{pressure[i]:.4f};"
        f"{temp[i]:.4f};{int(fault[i])}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer(HubSettings.create(tmp_path / "hub", allow_software_keys=True)).start()
    yield server
    server.stop()


def test_a_csv_goes_through_model_proofs_and_a_valid_receipt(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_sync.access import Access
    from cloud_sync.storage import Store

    store = Store.open(hub.settings.db_url)
    access = Access(store.engine, hub.settings.admin_token, lambda: 0)
    access.create_operator("pilot-viewer", "a long viewer password", {"default": "viewer"}, "t")
    key = access.create_api_key("pilot-viewer", "test")
    store.close()
    monkeypatch.setenv("FACTORYOPS_PILOT_HUB", hub.url)
    monkeypatch.setenv("FACTORYOPS_PILOT_ADMIN_TOKEN", hub.settings.admin_token)
    monkeypatch.setenv("FACTORYOPS_API_KEY", key)  # the hub has no open reads
    monkeypatch.setenv("FACTORYOPS_PILOT_DIR", str(tmp_path / "pilot"))
    at = AppTest.from_file(APP_FILE, default_timeout=240)
    at.run()
    at.text_input(key="csv_path").input(str(_plant_csv(tmp_path / "plant.csv"))).run()
    assert not at.exception, at.exception
    assert "plant.csv: 800 rows, 3 numeric columns, with a time column" in at.success[0].value
    at.button(key="run_model").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    flagged = int(at.metric[0].value.replace(",", ""))
    assert 0 < flagged <= 800 - 240  # after the 30 % used for training
    assert "labelled rows after training" in at.markdown[-1].value or any(
        "labelled rows after training" in m.value for m in at.markdown
    )
    at.button(key="send").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("8 signed windows (2,400 readings) accepted" in s.value for s in at.success)
    at.number_input(key="row").set_value(700).run()
    at.button(key="get_receipt").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any(s.value.startswith("VALID: ") for s in at.success), [s.value for s in at.success]


def test_a_file_that_is_not_a_plant_csv_is_named_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time;Flow\n2026-01-01 00:00:00;12.5\n2026-01-01 00:00:01;lots\n")
    monkeypatch.delenv("FACTORYOPS_PILOT_HUB", raising=False)
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    at.run()
    at.text_input(key="csv_path").input(str(bad)).run()
    assert at.error and "bad.csv:3: column 'Flow': 'lots' is not a number" in at.error[0].value


@pytest.mark.browser
def test_factoryops_pilot_serves_the_page_to_chromium(hub: HubServer, tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    port = free_port()
    cmd = [sys.executable, "-m", "factoryops", "pilot", "--hub", hub.url, "--port", str(port)]
    env = dict(os.environ, FACTORYOPS_HUB_ADMIN_TOKEN=hub.settings.admin_token)
    log = (tmp_path / "pilot.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            for _ in range(120):  # the server takes a few seconds to listen
                try:
                    page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                    break
                except Exception:  # noqa: BLE001 - connection refused until Streamlit listens
                    page.wait_for_timeout(500)
            page.get_by_text("FactoryOps pilot sandbox").wait_for(timeout=60_000)
            page.get_by_text("Upload a CSV or give its path to begin.").wait_for(timeout=60_000)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
