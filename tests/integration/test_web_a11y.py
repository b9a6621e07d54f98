"""Every page of the hub's web view in Chromium at a desktop and a tablet width: a
screenshot of each (kept in test-artifacts/), and axe-core (vendored in tests/vendor, the
product never serves it) finds no serious or critical accessibility violation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from attestation.microproof import AnomalySummary, ModelRef, SourceGap
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from tests.browser import launch, require_chromium
from tests.hubkit import Device, register, upload

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("FACTORYOPS_ARTIFACTS", "test-artifacts"))
WIDTHS = {"desktop": 1280, "tablet": 800}
MODEL = ModelRef("pump-twin", bytes(range(32)), "3")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubServer, str]]:
    settings = HubSettings.create(
        tmp_path_factory.mktemp("hub"), allow_software_keys=True, open_reads=True
    )
    server = HubServer(settings).start()
    dev = Device()
    utid = register(server.url, settings.admin_token, dev, "press-3")
    windows = []
    for i in range(12):
        hot = AnomalySummary(3, 2.4, 1.0) if i in (5, 6, 9) else AnomalySummary(0, 0.4, 1.0)
        silent = (SourceGap("plc-2", dev.t_ns, dev.t_ns + 5_000_000, "timeout"),) if i == 7 else ()
        windows.append(dev.window(20, anomaly=hot, model=MODEL, source_gaps=silent)[:2])
    upload(server.url, *windows)
    other = Device()
    register(server.url, settings.admin_token, other, "oven-1")
    upload(server.url, other.window(10, anomaly=AnomalySummary(0, 0.2, 1.0), model=MODEL)[:2])
    yield server, utid
    server.stop()


PAGES = ["/", "/devices/{utid}", "/anomalies", "/log", "/plant?site=default", "/jobs"]


def _violations(page: Any) -> list[dict[str, Any]]:
    page.evaluate(AXE.read_text(encoding="utf-8"))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
             .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
                         where: v.nodes.slice(0, 3).map(n => n.target.join(" "))}))"""
    )
    return found


@pytest.mark.parametrize("size", list(WIDTHS))
def test_every_page_renders_and_has_no_serious_accessibility_violation(
    hub: tuple[HubServer, str], size: str
) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    server, utid = hub
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    serious: dict[str, list[dict[str, Any]]] = {}
    with sync_playwright() as p:
        browser = launch(p, webgl=True)
        # axe is injected by the test; the pages' own CSP would (rightly) refuse it
        context = browser.new_context(
            viewport={"width": WIDTHS[size], "height": 900}, bypass_csp=True
        )
        page = context.new_page()
        for path in PAGES:
            url = server.url + path.format(utid=utid)
            assert httpx.get(url).status_code == 200, url
            page.goto(url)
            page.wait_for_load_state("load")
            name = path.strip("/").split("?")[0].split("/")[0] or "fleet"
            page.screenshot(path=str(ARTIFACTS / f"web-{name}-{size}.png"), full_page=True)
            found = [v for v in _violations(page) if v["impact"] in ("serious", "critical")]
            if found:
                serious[path] = found
        browser.close()
    assert serious == {}, serious
