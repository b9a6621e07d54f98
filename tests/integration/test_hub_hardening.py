"""Web hardening of the hub (issue 16, finding 4 and 6): CSRF on every state-changing route
whatever the content type, a Content-Security-Policy, Secure cookies, private files, the
client address in the audit, one name rule, and answers scoped to what the caller may see.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.hubkit import Device, body, post_paths

PASSWORD = "correct horse battery"
TEMPLATES = Path(__file__).resolve().parents[2] / "cloud_sync" / "web" / "templates"


def _hub(tmp_path: Path, **kw: object) -> tuple[TestClient, HubSettings, dict[str, str]]:
    """A closed hub with a device on plant-1 and on plant-2, operators ada (plant-1 admin)
    and bob (plant-2 operator)."""
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, **kw)  # type: ignore[arg-type]  # HubSettings.create keywords passed through as **kw
    client = TestClient(create_app(s), raise_server_exceptions=False)
    admin = {"authorization": f"Bearer {s.admin_token}"}
    utids = {}
    for name, site in (("press-1", "plant-1"), ("dryer-2", "plant-2")):
        dev = Device()
        r = client.post(
            "/v1/devices",
            json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": name,
                  "site": site},
            headers=admin,
        )  # fmt: skip
        utids[site] = r.json()["utid"]
        cbor = {"content-type": "application/cbor"}
        assert client.post("/v1/proofs", content=body(dev.window(3)[:2]), headers=cbor).is_success
    for user, roles in (("ada", {"plant-1": "admin"}), ("bob", {"plant-2": "operator"})):
        r = client.post(
            "/v1/operators",
            json={"username": user, "password": PASSWORD, "roles": roles},
            headers=admin,
        )
        assert r.status_code == 201, r.text
    return client, s, utids


def _login(client: TestClient, user: str) -> str:
    """Log in through the form; the session's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    r = client.post(
        "/login",
        data={"username": user, "password": PASSWORD, "csrf": token.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    assert csrf is not None
    return csrf.group(1)


def _tokens_made(client: TestClient, s: HubSettings) -> int:
    admin = {"authorization": f"Bearer {s.admin_token}"}
    entries = client.get("/v1/audit", headers=admin).json()["entries"]
    return sum(e["action"] == "enrollment_token.create" for e in entries)


def test_a_cross_site_text_plain_form_cannot_make_an_enrollment_token(tmp_path: Path) -> None:
    """The attack of issue 16: a form on another origin posts text/plain whose body parses
    as JSON (the `=` a form adds hidden in a duplicated key) with the admin's session."""
    client, s, _ = _hub(tmp_path, plain_http=True)
    csrf = _login(client, "ada")
    forged = b'{"site": "plant-1", "ttl_s": 2592000, "site": "=", "site": "plant-1"}'
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = client.post("/v1/enrollment-tokens", content=forged, headers={"content-type": ctype})
        assert r.status_code in (403, 415), (ctype, r.status_code, r.text)
    r = client.post(
        "/v1/enrollment-tokens",
        json={"site": "plant-1"},  # the right type, but no CSRF token: a session needs one
    )
    assert (r.status_code, r.json()["error"]) == (403, "csrf")
    assert _tokens_made(client, s) == 0
    ok = client.post(
        "/v1/enrollment-tokens", json={"site": "plant-1"}, headers={"x-csrf-token": csrf}
    )
    assert ok.status_code == 201, ok.text
    assert _tokens_made(client, s) == 1


def test_a_json_body_with_a_duplicated_key_is_refused(tmp_path: Path) -> None:
    client, s, _ = _hub(tmp_path)
    admin = {"authorization": f"Bearer {s.admin_token}", "content-type": "application/json"}
    r = client.post(
        "/v1/enrollment-tokens", content=b'{"site": "plant-1", "site": "plant-2"}', headers=admin
    )
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
    assert "site" in r.json()["detail"]


def test_every_answer_carries_a_content_security_policy(tmp_path: Path) -> None:
    client, _, utids = _hub(
        tmp_path, open_reads=True, embed_frame_ancestors="https://scada.example"
    )
    for path in ("/", f"/devices/{utids['plant-1']}", "/login", "/v1/devices", "/nowhere"):
        csp = client.get(path).headers["content-security-policy"]
        for directive in ("script-src 'self'", "object-src 'none'", "frame-ancestors 'none'"):
            assert directive in csp, (path, csp)
    embed = client.get(f"/embed/devices/{utids['plant-1']}").headers["content-security-policy"]
    assert "frame-ancestors https://scada.example" in embed and "script-src 'self'" in embed


def test_no_template_has_an_inline_script_or_handler() -> None:
    for page in TEMPLATES.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), page.name
        assert not re.search(r"\son[a-z]+\s*=", text, re.IGNORECASE), page.name
        assert "javascript:" not in text.lower(), page.name


def test_session_cookies_are_secure_unless_told_of_plain_http(tmp_path: Path) -> None:
    for plain, want in ((False, True), (True, False)):
        client, _, _ = _hub(tmp_path / str(plain), plain_http=plain)
        page = client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        assert ("secure" in page.headers["set-cookie"].lower()) is want
        # httpx keeps a Secure cookie away from http://testserver, as a browser would
        client.cookies.set("fo_login_csrf", token.group(1))
        r = client.post(
            "/login",
            data={"username": "ada", "password": PASSWORD, "csrf": token.group(1)},
            follow_redirects=False,
        )
        session = [c for c in r.headers.get_list("set-cookie") if c.startswith("fo_session=")]
        assert session and ("secure" in session[0].lower()) is want, session


def test_plain_http_is_refused_off_loopback() -> None:
    from cloud_sync.cli import hub

    r = CliRunner().invoke(hub, ["serve", "--plain-http", "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code != 0 and "loopback" in r.output, r.output


def test_the_database_and_key_files_are_private(tmp_path: Path) -> None:
    _, s, _ = _hub(tmp_path)
    assert stat.S_IMODE(s.data_dir.stat().st_mode) == 0o700
    for name in ("hub.db", "hub.db-wal", "hub.db-shm", "hub-log.key", "fleet-ca.key",
                 "admin-token", "webhook-secret"):  # fmt: skip
        path = s.data_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (name, oct(path.stat().st_mode))
    assert (s.data_dir / "hub.db").exists()


def test_every_audit_row_of_an_api_write_has_the_client_address(tmp_path: Path) -> None:
    client, s, utids = _hub(tmp_path, plain_http=True)
    admin = {"authorization": f"Bearer {s.admin_token}"}
    client.post("/v1/operators/bob/api-keys", headers=admin)
    client.post("/v1/enrollment-tokens", json={"site": "plant-1"}, headers=admin)
    client.post(f"/v1/devices/{utids['plant-2']}/revoke", headers=admin)
    client.post(
        "/v1/embed-tokens",
        json={"site": "plant-1", "frame_ancestors": ["https://scada.example"]},
        headers=admin,
    )
    client.post("/v1/sites/plant-1/usage/2026-01/close", headers=admin)
    # a job and its cancel (their rows had no address: issue 16 item 5)
    job = client.post(
        "/v1/jobs",
        json={"type": "selftest", "params": {"steps": 50, "step_seconds": 0.2}, "site": "plant-1"},
        headers=admin,
    ).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=admin)
    entries = client.get("/v1/audit", headers=admin).json()["entries"]
    assert {e["action"] for e in entries} >= {
        "device.register", "operator.create", "api_key.create", "enrollment_token.create",
        "device.revoke", "embed_token.create", "usage.close", "job.submit", "job.cancel",
    }  # fmt: skip
    assert all(e["ip"] == "testclient" for e in entries), [(e["action"], e["ip"]) for e in entries]


@pytest.mark.parametrize("name", ["Bob", "b", "bob smith", "../bob", "bob\n", "x" * 65])
def test_one_name_rule_for_operators_in_the_api_and_the_cli(tmp_path: Path, name: str) -> None:
    from cloud_sync.cli import hub

    client, s, _ = _hub(tmp_path)
    admin = {"authorization": f"Bearer {s.admin_token}"}
    api = client.post("/v1/operators", json={"username": name, "password": PASSWORD}, headers=admin)
    assert api.status_code == 422, api.text
    cli = CliRunner().invoke(
        hub,
        ["operator", name, "--data-dir", str(s.data_dir), "--password", PASSWORD],
    )
    said = cli.output + str(cli.exception)
    assert cli.exit_code != 0 and "username" in said, said


def test_a_roles_map_names_real_roles_and_sites_only(tmp_path: Path) -> None:
    from cloud_sync.cli import hub

    client, s, _ = _hub(tmp_path)
    admin = {"authorization": f"Bearer {s.admin_token}"}
    for roles in ({"plant/1": "viewer"}, {"": "viewer"}, {"plant-1": "root"}):
        r = client.post(
            "/v1/operators",
            json={"username": "carol", "password": PASSWORD, "roles": roles},
            headers=admin,
        )
        assert r.status_code == 422, (roles, r.text)
    cli = CliRunner().invoke(
        hub,
        ["operator", "carol", "--role", "plant/1=viewer", "--data-dir", str(s.data_dir),
         "--password", PASSWORD],
    )  # fmt: skip
    said = cli.output + str(cli.exception)
    assert cli.exit_code != 0 and "roles" in said, said


def test_an_operator_sees_the_totals_of_their_own_sites(tmp_path: Path) -> None:
    client, _, _ = _hub(tmp_path, plain_http=True)
    _login(client, "bob")  # plant-2 only: one device with 3 readings
    page = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", client.get("/").text))
    for total in ("1 device ", "1 signed window ", "3 readings"):  # 2 and 6 fleet-wide
        assert total in page, (total, page)


def test_unknown_and_other_site_devices_get_the_same_answer(tmp_path: Path) -> None:
    client, s, utids = _hub(tmp_path)
    key = client.post(
        "/v1/operators/bob/api-keys", headers={"authorization": f"Bearer {s.admin_token}"}
    ).json()["api_key"]
    bob = {"authorization": f"Bearer {key}"}
    unknown = "utid:" + "ab" * 32
    for template in ("/v1/devices/{}", "/v1/devices/{}/readings/0/receipt"):
        theirs = client.get(template.format(utids["plant-1"]), headers=bob)
        nobody = client.get(template.format(unknown), headers=bob)
        assert (theirs.status_code, theirs.json()["error"]) == (404, "unknown_device"), template
        assert (nobody.status_code, nobody.json()["error"]) == (404, "unknown_device"), template
    theirs = client.post(f"/v1/devices/{utids['plant-1']}/revoke", headers=bob)
    nobody = client.post(f"/v1/devices/{unknown}/revoke", headers=bob)
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json()["detail"].replace(utids["plant-1"], "X") == nobody.json()[
        "detail"
    ].replace(unknown, "X")


def test_no_state_changing_route_acts_on_a_session_without_its_csrf_token(
    tmp_path: Path,
) -> None:
    """Every POST route, sent what a page of another origin can make a browser send with a
    site admin's session cookie (a form of each encoding, or JSON without the CSRF token),
    answers 4xx and changes nothing: no audit row, the device still enrolled, no job."""
    client, s, utids = _hub(tmp_path, plain_http=True)
    _login(client, "ada")  # plant-1 admin: her session may do most on plant-1
    admin = {"authorization": f"Bearer {s.admin_token}"}
    before = client.get("/v1/audit", headers=admin).json()["entries"]
    values = {"utid": utids["plant-1"], "username": "bob", "job_id": "1", "site": "plant-1",
              "month": "2026-01"}  # fmt: skip
    forged = {
        "text/plain": b'{"site": "plant-1", "type": "selftest", "params": {}, "x": "="}',
        "application/x-www-form-urlencoded": b"site=plant-1&type=selftest&username=eve",
        "multipart/form-data; boundary=b": b'--b\r\nContent-Disposition: form-data; name="site"'
        b"\r\n\r\nplant-1\r\n--b--\r\n",
        "application/json": b'{"site": "plant-1", "type": "selftest", "params": {}}',
    }
    # a device challenge is open to anyone, session or not (the device answers it with its
    # key): a forged request gets nothing a plain one would not
    paths = [p for p in post_paths(client.app) if p != "/v1/devices/{utid}/challenge"]
    assert "/v1/enrollment-tokens" in paths and "/devices/{utid}/revoke" in paths
    answers = {}
    for path in paths:
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        for ctype, content in forged.items():
            r = client.post(url, content=content, headers={"content-type": ctype},
                            follow_redirects=False)  # fmt: skip
            answers[path, ctype.split(";")[0]] = r.status_code
    assert {k: v for k, v in answers.items() if not 400 <= v < 500} == {}
    after = client.get("/v1/audit", headers=admin).json()["entries"]
    assert [e for e in after if e not in before] == []
    assert client.get(f"/v1/devices/{utids['plant-1']}", headers=admin).json()["revoked"] is False
    assert client.get("/v1/jobs", headers=admin).json()["jobs"] == []
