"""The 3D plant view (issue 23, item 6) in real Chromium with software WebGL (SwiftShader):
each piece takes the colour of its device's newest anomaly score, turns red when a new
window crosses the limit, and a click opens the device's page. The layout is a file in the
hub's data folder; its JSON API and its refusals are checked too."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from attestation.microproof import AnomalySummary, ModelRef
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from tests.browser import launch, require_chromium
from tests.hubkit import Device, register, upload

pytestmark = pytest.mark.timeout(180)
ARTIFACTS = Path(os.environ.get("FACTORYOPS_ARTIFACTS", "test-artifacts"))
MODEL = ModelRef("pump-twin", bytes(32), "1")
CALM = AnomalySummary(0, 0.3, 1.0)
HOT = AnomalySummary(12, 3.2, 1.0)
LAYOUT = {
    "name": "two_pumps",
    "title": "Two pumps",
    "pieces": [
        {"id": "pump-a", "label": "Pump A", "shape": "cylinder", "position": [-1.5, 0.5, 0],
         "size": [1.2, 1.0, 1.2], "device": "pump-a-gw"},
        {"id": "pump-b", "label": "Pump B", "shape": "box", "position": [1.5, 0.5, 0],
         "size": [1.2, 1.0, 1.2], "device": "pump-b-gw"},
    ],
}  # fmt: skip


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[tuple[HubServer, dict[str, Device], dict[str, str]]]:
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    (settings.data_dir / "layouts").mkdir()
    (settings.data_dir / "layouts" / "two_pumps.json").write_text(json.dumps(LAYOUT))
    hub = HubServer(settings).start()
    devices = {"a": Device(), "b": Device()}
    utids = {
        k: register(hub.url, settings.admin_token, d, f"pump-{k}-gw") for k, d in devices.items()
    }
    for d in devices.values():
        upload(hub.url, d.window(5, anomaly=CALM, model=MODEL)[:2])
    yield hub, devices, utids
    hub.stop()


def test_the_plant_api_gives_each_piece_its_device_and_score(
    plant: tuple[HubServer, dict[str, Device], dict[str, str]],
) -> None:
    hub, devices, utids = plant
    upload(hub.url, devices["b"].window(5, anomaly=HOT, model=MODEL)[:2])
    doc = httpx.get(f"{hub.url}/v1/sites/default/plant", params={"layout": "two_pumps"}).json()
    by_id = {p["id"]: p for p in doc["pieces"]}
    assert by_id["pump-a"]["utid"] == utids["a"] and by_id["pump-a"]["score"] == pytest.approx(0.3)
    assert by_id["pump-b"]["score"] == pytest.approx(3.2) and by_id["pump-b"]["window"] == 1
    bad = httpx.get(f"{hub.url}/v1/sites/default/plant", params={"layout": "../etc"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    gone = httpx.get(f"{hub.url}/v1/sites/default/plant", params={"layout": "nowhere"})
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_layout"


def _pixel(png: bytes, at: dict[str, float]) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    r, g, b = image.getpixel((round(at["x"]), round(at["y"])))  # type: ignore[misc]  # RGB
    return int(r), int(g), int(b)


@pytest.mark.browser
def test_a_piece_turns_red_when_its_device_crosses_the_limit_and_opens_on_click(
    plant: tuple[HubServer, dict[str, Device], dict[str, str]],
) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    hub, devices, utids = plant
    with sync_playwright() as p:
        browser = launch(p, webgl=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{hub.url}/plant?site=default&layout=two_pumps")
        page.wait_for_selector("#scene[data-ready='1']", timeout=60_000)
        where = {k: page.evaluate("id => plantView.project(id)", f"pump-{k}") for k in "ab"}
        before = page.screenshot()
        a, b = _pixel(before, where["a"]), _pixel(before, where["b"])
        assert a[1] > a[0] + 40 and b[1] > b[0] + 40, (a, b)  # both green: calm
        upload(hub.url, devices["b"].window(5, anomaly=HOT, model=MODEL)[:2])
        page.evaluate("() => plantView.refresh()")
        after = page.screenshot()
        a, b = _pixel(after, where["a"]), _pixel(after, where["b"])
        assert b[0] > b[1] + 80 and b[0] > b[2] + 80, b  # pump B red: above the limit
        assert a[1] > a[0] + 40, a  # pump A unchanged
        assert page.evaluate("() => plantView.band('pump-b')") == "alarm"
        score_cell = page.locator("tr[data-piece='pump-b'] td").nth(2)
        assert score_cell.text_content() == "3.20" and score_cell.get_attribute("class") == "alarm"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "plant-3d.png").write_bytes(after)
        page.mouse.click(where["b"]["x"], where["b"]["y"])
        page.wait_for_url(f"**/devices/{utids['b']}")
        assert errors == []
        browser.close()
