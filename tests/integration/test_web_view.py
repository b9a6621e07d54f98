"""The hub's web view in real Chromium (Playwright, /usr/bin/chromium): pages load, the
charts draw the stored readings, and "verify this reading" downloads a receipt that verifies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from attestation import load_anchors, receipt_from_json, report_receipt
from attestation.microproof import AnomalySummary, ModelRef
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from tests.browser import launch, require_chromium
from tests.hubkit import Device, body

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]
ARTIFACTS = Path(os.environ.get("FACTORYOPS_ARTIFACTS", "test-artifacts"))


VIEWER_PASSWORD = "a long viewer password"


def _seed(hub: HubServer, settings: HubSettings) -> str:
    """A device with four windows (the third's anomaly over its limit) and a viewer; the
    device's UTID."""
    admin = {"authorization": f"Bearer {settings.admin_token}"}
    dev = Device()
    utid: str = httpx.post(
        f"{hub.url}/v1/devices",
        json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": "press-3"},
        headers=admin,
    ).json()["utid"]
    made = httpx.post(
        f"{hub.url}/v1/operators",
        json={"username": "vera", "password": VIEWER_PASSWORD, "roles": {"default": "viewer"}},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    hot = AnomalySummary(2, 4.2, 1.0)
    model = ModelRef("pump-pca", bytes(32), "1")
    windows = [dev.window(6, anomaly=hot if i == 2 else None, model=model)[:2] for i in range(4)]
    sent = httpx.post(
        f"{hub.url}/v1/proofs", content=body(*windows), headers={"content-type": "application/cbor"}
    )
    assert sent.status_code == 200, sent.text
    return utid


def _log_in_as_viewer(page: Page, url: str) -> None:
    page.goto(f"{url}/")  # a closed hub: to the login form first
    page.wait_for_url("**/login")
    page.fill("input[name=username]", "vera")
    page.fill("input[name=password]", "wrong password!")
    page.click("button[type=submit]")
    page.wait_for_selector("[role=alert]")  # refused, and said so
    page.fill("input[name=username]", "vera")
    page.fill("input[name=password]", VIEWER_PASSWORD)
    page.click("button[type=submit]")


def _check_device_page(page: Page, saved: Path) -> None:
    """The device page's charts, chain and layout; its verify link's receipt into ``saved``."""
    page.click("text=press-3")
    page.wait_for_selector("figure.chart[data-signal]")
    signal = page.locator("figure.chart[data-signal]").first
    points = signal.locator("polyline.series").get_attribute("points") or ""
    assert len(points.split()) == 24  # every stored reading of the signal is drawn
    axes = signal.locator("svg.tchart").inner_html()
    assert "time (UTC)" in axes and "m3/h" in axes  # a time axis, and the unit
    # the score chart: the window above its limit is over the dashed limit line
    assert page.locator("#scores line.limit").count() == 1
    assert page.locator("#chain tbody tr").count() == 4
    assert page.locator("button.revoke").count() == 0  # a viewer cannot revoke
    _nav_items_do_not_overlap(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "device-page.png"), full_page=True)
    with page.expect_download() as dl:
        page.click("a.verify")
    dl.value.save_as(saved)


def _check_fleet_pages(page: Page) -> None:
    """The fleet overview, the anomaly list and the log's checkpoint history."""
    page.click("nav >> text=Fleet")
    assert "software (dev)" in page.inner_text("#fleet")
    page.click("nav >> text=Anomalies")
    row = page.inner_text("#anomalies tbody tr")
    assert "press-3" in row and "4.200" in row and "pump-pca" in row
    page.click("nav >> text=Log checkpoints")
    assert page.inner_text("#checkpoint").startswith("factoryops.local/hub-log\n4\n")
    page.screenshot(path=str(ARTIFACTS / "log-page.png"), full_page=True)


def _check_widget(page: Page, url: str, utid: str) -> None:
    """The widget works inside an iframe on another page; other pages refuse framing."""
    page.set_content(
        f'<iframe id="w" src="{url}/embed/devices/{utid}" width="450" height="600">'
        "</iframe>"
        f'<iframe id="x" src="{url}/devices/{utid}" width="450" height="200"></iframe>'
    )
    widget = page.frame_locator("#w")
    widget.locator("figure.chart").first.wait_for()
    assert widget.locator("figure.chart polyline").count() == 1
    page.screenshot(path=str(ARTIFACTS / "embedded-widget.png"))


def test_device_page_draws_charts_and_its_verify_link_gives_a_valid_receipt(
    tmp_path: Path,
) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True, plain_http=True)
    hub = HubServer(settings).start()
    saved = tmp_path / "receipt.json"
    try:
        utid = _seed(hub, settings)
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(accept_downloads=True)
            _log_in_as_viewer(page, hub.url)
            _check_device_page(page, saved)
            _check_fleet_pages(page)
            _check_widget(page, hub.url, utid)
            browser.close()
        framed = httpx.get(f"{hub.url}/devices/{utid}", follow_redirects=False)
        assert framed.headers["x-frame-options"] == "DENY"
        verdict = report_receipt(
            receipt_from_json(json.loads(saved.read_text())),
            load_anchors(
                [settings.data_dir / "fleet-ca.pem", settings.data_dir / "hub-log-key.pem"]
            ),
        )
        assert verdict.valid, verdict.error
        assert "log" in verdict.checked
        assert utid == verdict.utid
    finally:
        hub.stop()


def test_hostile_device_ids_in_the_web_view_get_4xx(tmp_path: Path) -> None:
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    with HubServer(settings) as hub:
        for bad in ("<script>alert(1)<%2Fscript>", "utid:" + "zz" * 32, "' OR 1=1 --"):
            r = httpx.get(f"{hub.url}/devices/{bad}")
            assert 400 <= r.status_code < 500
            assert r.headers["content-type"].startswith("application/json")
            assert "<script>" not in r.text


GAP_PX = 4


def _nav_items_do_not_overlap(page: Any) -> None:
    """The live-updates toggle, the operator's name and "Log out" sit apart in the top bar
    (the toggle once ran into the name), at desktop and tablet widths."""
    for width in (1280, 768):
        page.set_viewport_size({"width": width, "height": 900})
        boxes = [
            page.locator(sel).bounding_box()
            for sel in (
                "nav.top .refresh-toggle",
                "nav.top form.logout span",
                "nav.top form.logout button",
            )
        ]
        assert all(b is not None for b in boxes), boxes
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a is not None and b is not None
                apart = (  # with a visible space between them (they once touched)
                    a["x"] + a["width"] + GAP_PX <= b["x"]
                    or b["x"] + b["width"] + GAP_PX <= a["x"]
                    or a["y"] + a["height"] + GAP_PX <= b["y"]
                    or b["y"] + b["height"] + GAP_PX <= a["y"]
                )
                assert apart, f"top bar items overlap at {width} px: {a} {b}"
    page.set_viewport_size({"width": 1280, "height": 900})
