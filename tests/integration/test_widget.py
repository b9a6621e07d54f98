"""The partner widget (issue 23, item 3): an embed token is signed, scoped to one device or
one site, expires, and names the only origins that may frame it; the page's CSP says so and
a browser obeys it. Real hub (TestClient and uvicorn), real Chromium for the framing."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_sync.app import create_app
from cloud_sync.embedtoken import BadEmbedToken, make_token, read_token
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from tests.browser import launch, require_chromium
from tests.hubkit import Device, register, upload

pytestmark = pytest.mark.timeout(180)
KEY = b"k" * 32


def test_a_token_round_trips_and_a_changed_or_old_one_is_refused() -> None:
    token, grant = make_token(
        KEY, "device", "utid:" + "a" * 64, now_s=1000, ttl_s=3600,
        frame_ancestors=["https://partner.example"],
    )  # fmt: skip
    assert read_token(KEY, token, now_s=2000) == grant
    body, mac = token.split(".")
    forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    for bad, now, why in [
        (forged, 2000, "not made by this hub"),
        (token, 1000 + 3601, "expired"),
        ("fo-key-abc.def", 2000, "not an embed token"),
    ]:
        with pytest.raises(BadEmbedToken, match=why):
            read_token(KEY, bad, now_s=now)
    with pytest.raises(BadEmbedToken, match="not an origin"):
        make_token(KEY, "site", "s", now_s=0, ttl_s=60, frame_ancestors=["*"])


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[HubServer, dict[str, str], str]]:
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True, plain_http=True)
    server = HubServer(settings).start()
    utids = {}
    for name in ("press-1", "press-2"):
        dev = Device()
        utids[name] = register(server.url, settings.admin_token, dev, name)
        upload(server.url, *[dev.window(8)[:2] for _ in range(3)])
    client = TestClient(create_app(settings))
    admin = {"authorization": f"Bearer {settings.admin_token}"}
    olga = {"username": "olga", "password": "a long operator password"}
    made = client.post(
        "/v1/operators", json={**olga, "roles": {"default": "operator"}}, headers=admin
    )
    assert made.status_code == 201, made.text
    key = client.post("/v1/operators/olga/api-keys", headers=admin).json()["api_key"]
    yield server, utids, key
    server.stop()


def _token(client: TestClient, key: str, **body: object) -> str:
    r = client.post("/v1/embed-tokens", json=body, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_a_device_token_shows_that_device_only_with_its_frame_ancestors(
    hub: tuple[HubServer, dict[str, str], str],
) -> None:
    server, utids, key = hub
    client = TestClient(create_app(server.settings))
    token = _token(client, key, device=utids["press-1"], frame_ancestors=["http://127.0.0.1:8765"])
    page = client.get(f"/widget/{token}")
    assert page.status_code == 200 and "press-1" in page.text and "press-2" not in page.text
    assert "frame-ancestors http://127.0.0.1:8765" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    site = _token(client, key, site="default", frame_ancestors=["https://partner.example"])
    both = client.get(f"/widget/{site}").text
    assert "press-1" in both and "press-2" in both
    assert client.get(f"/widget/{token[:-3]}xyz").status_code == 403  # changed


def test_only_an_operator_makes_tokens_and_the_order_is_checked(
    hub: tuple[HubServer, dict[str, str], str],
) -> None:
    server, utids, key = hub
    client = TestClient(create_app(server.settings))
    anonymous = client.post(
        "/v1/embed-tokens", json={"site": "default", "frame_ancestors": ["https://p.example"]}
    )
    assert anonymous.status_code == 401
    auth = {"authorization": f"Bearer {key}"}
    both = {"site": "default", "device": utids["press-1"], "frame_ancestors": ["https://p.example"]}
    r = client.post("/v1/embed-tokens", json=both, headers=auth)
    assert r.status_code == 422 and "exactly one of device and site" in r.json()["detail"]
    wild = client.post(
        "/v1/embed-tokens", json={"site": "default", "frame_ancestors": ["*"]}, headers=auth
    )
    assert wild.status_code == 422 and "not an origin" in wild.json()["detail"]


def test_a_token_stops_working_when_it_expires(hub: tuple[HubServer, dict[str, str], str]) -> None:
    server, utids, key = hub
    now = [time.time_ns()]
    client = TestClient(create_app(server.settings, clock=lambda: now[0]))
    token = _token(
        client, key, device=utids["press-1"], ttl_s=120, frame_ancestors=["https://p.example"]
    )
    assert client.get(f"/widget/{token}").status_code == 200
    now[0] += 121 * 10**9
    late = client.get(f"/widget/{token}")
    assert late.status_code == 403 and "expired" in late.json()["detail"]


class _Partner(http.server.ThreadingHTTPServer):
    """A partner's site on another origin: one page holding ``widget_url`` in an iframe."""

    widget_url = ""

    def __init__(self) -> None:
        partner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = (
                    "<html><body><h1>Partner</h1>"
                    f'<iframe src="{partner.widget_url}" width="900" height="400"></iframe>'
                    "</body></html>"
                )
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(page.encode())

            def log_message(self, *args: object) -> None:  # quiet test output
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.mark.browser
def test_chromium_shows_the_widget_to_the_named_origin_and_refuses_another(
    hub: tuple[HubServer, dict[str, str], str],
) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    server, utids, key = hub
    client = TestClient(create_app(server.settings))
    allowed, other = _Partner(), _Partner()
    token = _token(client, key, device=utids["press-1"], frame_ancestors=[allowed.origin])
    allowed.widget_url = other.widget_url = f"{server.url}/widget/{token}"
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page()
            page.goto(allowed.origin)
            shown = page.frame_locator("iframe").get_by_role("heading", name="press-1")
            shown.wait_for(timeout=30_000)
            artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "widget-partner.png"))
            page.goto(other.origin)
            page.wait_for_load_state("load")
            page.get_by_role("heading", name="Partner").wait_for()
            # the browser refused to show the frame (CSP frame-ancestors): nothing of it shows
            assert page.frame_locator("iframe").get_by_role("heading", name="press-1").count() == 0
            assert not page.frames[-1].url.startswith(server.url)
            browser.close()
    finally:
        for partner in (allowed, other):
            partner.shutdown()
            partner.server_close()
