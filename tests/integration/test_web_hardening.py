"""The web view's hardening in real Chromium (Playwright, /usr/bin/chromium): a cross-site
form posted with a site admin's session makes nothing, and a device name built to break out
of a script runs nothing; it is shown as text in the revoke confirmation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
from tests.browser import launch, require_chromium
from tests.hubkit import Device, body, enrol

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]
PASSWORD = "a long operator password"
# a name that closes the JS string the old template put it in, and an attribute too
HOSTILE = "x'); document.title = 'pwned'; ('\" onmouseover=\"document.title='pwned2'"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[HubServer, HubSettings]]:
    require_chromium()
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True, plain_http=True)
    server = HubServer(settings).start()
    admin = {"authorization": f"Bearer {settings.admin_token}"}
    made = httpx.post(
        f"{server.url}/v1/operators",
        json={"username": "ada", "password": PASSWORD, "roles": {"plant-1": "admin"}},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    try:
        yield server, settings
    finally:
        server.stop()


def _log_in(page: Any, url: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")


def _tokens_made(hub: HubServer, s: HubSettings) -> list[dict[str, Any]]:
    admin = {"authorization": f"Bearer {s.admin_token}"}
    entries = httpx.get(f"{hub.url}/v1/audit", headers=admin).json()["entries"]
    return [e for e in entries if e["action"] == "enrollment_token.create"]


class _Attacker(BaseHTTPRequestHandler):
    """Serves one page that posts a text/plain form to the hub as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        # enctype text/plain sends `name=value`: the name opens a JSON object and the `=`
        # lands inside a string, so the body parses as JSON with a repeated key
        page = (
            f'<form method="post" enctype="text/plain" action="{self.target}">'
            '<input name=\'{"site": "plant-1", "ttl_s": 2592000, "site": "\''
            ' value=\'", "site": "plant-1"}\'>'
            "</form><script>document.forms[0].submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        pass


def test_a_cross_site_form_with_an_admin_session_makes_no_enrollment_token(
    hub: tuple[HubServer, HubSettings],
) -> None:
    from playwright.sync_api import sync_playwright

    server, settings = hub
    _Attacker.target = f"{server.url}/v1/enrollment-tokens"
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)  # another port of the same host
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            _log_in(page, server.url)  # a site admin, with a live session cookie
            with page.expect_response(_Attacker.target) as answer:
                page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
            assert answer.value.request.all_headers().get("cookie", "").count("fo_session=") == 1
            assert answer.value.status in (403, 415), answer.value.text()
            browser.close()
    finally:
        evil.shutdown()
        evil.server_close()
    assert _tokens_made(server, settings) == []


def test_a_device_name_that_breaks_out_of_a_script_runs_nothing(
    hub: tuple[HubServer, HubSettings],
) -> None:
    """A hostile name (from a database an older hub wrote, or a future way in) is text in
    the page and in the confirmation, and the revoke still needs the operator's yes."""
    from playwright.sync_api import sync_playwright

    server, settings = hub
    dev = Device()
    store = Store.open(settings.db_url)
    try:
        utid = enrol(store, dev, HOSTILE, site="plant-1", now_ns=time.time_ns())
    finally:
        store.close()
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        _log_in(page, server.url)
        response = page.goto(f"{server.url}/devices/{utid}")
        assert response is not None
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "object-src 'none'" in csp
        assert page.inner_text("h1") == HOSTILE  # the name, as text
        title = page.title()  # the name too; a script that ran would have replaced it
        assert title == f"{HOSTILE} — FactoryOps hub"
        asked: list[str] = []

        def answer(dialog: Any, accept: bool) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        page.once("dialog", lambda d: answer(d, False))
        page.hover("button.revoke")
        page.click("button.revoke")
        assert asked == [f"Revoke {HOSTILE}? Its further proofs will be refused."]
        assert page.title() == title
        assert httpx.get(
            f"{server.url}/v1/devices/{utid}",
            headers={"authorization": f"Bearer {settings.admin_token}"},
        ).json()["revoked"] is False  # fmt: skip
        page.once("dialog", lambda d: answer(d, True))
        with page.expect_navigation():
            page.click("button.revoke")
        assert "REVOKED" in page.inner_text("body")
        assert page.title() == title
        assert errors == []
        browser.close()


def test_no_page_trips_its_content_security_policy(hub: tuple[HubServer, HubSettings]) -> None:
    """No inline script or handler anywhere, as the browser sees it: every page (templates
    and the HTML the hub writes itself, charts included) loads with no CSP violation. The
    template check in test_hub_hardening.py reads the files; this one runs the pages."""
    from playwright.sync_api import sync_playwright

    server, settings = hub
    admin = {"authorization": f"Bearer {settings.admin_token}"}
    dev = Device()
    utid = httpx.post(
        f"{server.url}/v1/devices",
        json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": "press-1",
              "site": "plant-1"},
        headers=admin,
    ).json()["utid"]  # fmt: skip
    assert httpx.post(
        f"{server.url}/v1/proofs",
        content=body(dev.window(5)[:2]),
        headers={"content-type": "application/cbor"},
    ).is_success
    widget = httpx.post(
        f"{server.url}/v1/embed-tokens",
        json={"site": "plant-1", "frame_ancestors": ["https://scada.example"]},
        headers=admin,
    ).json()["url"]
    pages = ["/", f"/devices/{utid}", "/anomalies", "/log", "/plant?site=plant-1", "/jobs",
             f"/embed/devices/{utid}", widget]  # fmt: skip
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        refused: list[tuple[str, str]] = []
        page.on(
            "console",
            lambda msg: (
                refused.append((page.url, msg.text))
                if "Content Security Policy" in msg.text
                else None
            ),
        )
        _log_in(page, server.url)
        for path in pages:
            response = page.goto(f"{server.url}{path}")
            assert response is not None and response.ok, (path, response and response.status)
            page.wait_for_load_state("load")
        seen = list(refused)
        # the listener does see a refusal: an inline handler added to the page is one
        with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
            page.evaluate(
                "document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"1\">')"
            )
        browser.close()
    assert seen == []
