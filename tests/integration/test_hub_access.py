"""Sites and access on a closed hub: roles per site, API keys, browser sessions with CSRF,
devices kept to the device API, and every write in the audit log.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings
from tests.hubkit import Device

PASSWORD = "correct horse battery"


@pytest.fixture
def hub(tmp_path: Path) -> tuple[TestClient, HubSettings, dict[str, str]]:
    """A closed hub (no open reads) with a device on plant-1 and one on plant-2."""
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, plain_http=True)
    client = TestClient(create_app(s), raise_server_exceptions=False)
    admin = {"authorization": f"Bearer {s.admin_token}"}
    utids = {}
    for name, site in (("press-1", "plant-1"), ("dryer-2", "plant-2")):
        r = client.post(
            "/v1/devices",
            json={
                "public_key_pem": Device().public_pem(),
                "key_kind": "software",
                "name": name,
                "site": site,
            },
            headers=admin,
        )
        utids[site] = r.json()["utid"]
    for user, roles in (("alice", {"plant-1": "viewer"}), ("bob", {"plant-2": "operator"})):
        r = client.post(
            "/v1/operators",
            json={"username": user, "password": PASSWORD, "roles": roles},
            headers=admin,
        )
        assert r.status_code == 201, r.text
    return client, s, utids


def _key(client: TestClient, s: HubSettings, user: str) -> dict[str, str]:
    r = client.post(
        f"/v1/operators/{user}/api-keys", headers={"authorization": f"Bearer {s.admin_token}"}
    )
    return {"authorization": f"Bearer {r.json()['api_key']}"}


def test_reads_need_a_principal_and_see_only_their_sites(
    hub: tuple[TestClient, HubSettings, dict[str, str]],
) -> None:
    client, s, utids = hub
    assert client.get("/v1/devices").status_code == 401
    alice = _key(client, s, "alice")
    names = [d["name"] for d in client.get("/v1/devices", headers=alice).json()["devices"]]
    assert names == ["press-1"]
    assert client.get(f"/v1/devices/{utids['plant-1']}", headers=alice).status_code == 200
    other = client.get(f"/v1/devices/{utids['plant-2']}", headers=alice)
    # a device alice may not see is answered as if it did not exist
    assert other.status_code == 404 and other.json()["error"] == "unknown_device"
    admin = {"authorization": f"Bearer {s.admin_token}"}
    assert len(client.get("/v1/devices", headers=admin).json()["devices"]) == 2
    assert client.get("/v1/log/checkpoint").status_code == 200  # the log stays public


def test_roles_decide_who_may_revoke_and_every_write_is_audited(
    hub: tuple[TestClient, HubSettings, dict[str, str]],
) -> None:
    client, s, utids = hub
    alice, bob = _key(client, s, "alice"), _key(client, s, "bob")
    assert client.post(f"/v1/devices/{utids['plant-1']}/revoke", headers=alice).status_code == 403
    assert client.post(f"/v1/devices/{utids['plant-1']}/revoke", headers=bob).status_code == 404
    assert client.post(f"/v1/devices/{utids['plant-2']}/revoke", headers=bob).status_code == 200
    assert (
        client.post(
            "/v1/operators", json={"username": "eve", "password": PASSWORD}, headers=bob
        ).status_code
        == 403
    )
    assert client.get("/v1/audit", headers=bob).status_code == 403
    admin = {"authorization": f"Bearer {s.admin_token}"}
    entries = client.get("/v1/audit", headers=admin).json()["entries"]
    actions = [(e["actor"], e["action"], e["target"]) for e in entries]
    assert ("bob", "device.revoke", utids["plant-2"]) in actions
    assert ("admin", "operator.create", "alice") in actions
    assert ("admin", "api_key.create", "bob") in actions
    assert ("admin", "device.register", utids["plant-1"]) in actions
    weak = client.post(
        "/v1/operators", json={"username": "carol", "password": "short"}, headers=admin
    )
    assert weak.status_code == 422
    again = client.post(
        "/v1/operators", json={"username": "alice", "password": PASSWORD}, headers=admin
    )
    assert again.status_code == 409


def test_a_device_token_or_a_forged_key_is_not_an_operator(
    hub: tuple[TestClient, HubSettings, dict[str, str]],
) -> None:
    client, _, _ = hub
    for token in ("fo-dev-abc", "fo-key-0000.forged", "something-else"):
        r = client.get("/v1/devices", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 401, token


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m is not None
    return m.group(1)


def test_browser_login_sessions_and_csrf(
    hub: tuple[TestClient, HubSettings, dict[str, str]],
) -> None:
    client, _s, utids = hub
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    page = client.get("/login")
    token = _csrf(page.text)
    forged = client.post("/login", data={"username": "bob", "password": PASSWORD, "csrf": "x" * 20})
    assert forged.status_code == 403  # the token must match the login page's cookie
    wrong = client.post(
        "/login",
        data={"username": "<script>bob", "password": "nope", "csrf": token},
        follow_redirects=False,
    )
    assert wrong.headers["location"] == "/login?failed=1"
    assert "<script>" not in client.get("/login?failed=1").text  # nothing the user typed is echoed
    token = _csrf(client.get("/login").text)
    ok = client.post(
        "/login",
        data={"username": "bob", "password": PASSWORD, "csrf": token},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and "fo_session" in ok.cookies
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    index = client.get("/").text
    assert "dryer-2" in index and "press-1" not in index  # bob sees plant-2 only
    device = client.get(f"/devices/{utids['plant-2']}").text
    session_csrf = _csrf(device)
    url = f"/devices/{utids['plant-2']}/revoke"
    assert client.post(url, data={"csrf": "wrong"}).status_code == 403  # a forged form
    assert client.post(url, data={"csrf": session_csrf}, follow_redirects=False).status_code == 303
    assert "REVOKED" in client.get(f"/devices/{utids['plant-2']}").text
    client.post("/logout", data={"csrf": session_csrf})
    assert client.get("/", follow_redirects=False).status_code == 303  # logged out


def test_operator_creation_checks_credentials_before_it_reads_the_body(
    hub: tuple[TestClient, HubSettings, dict[str, str]],
) -> None:
    """A stranger's body is never parsed or validated: the answer is 401, not a 422 that
    would tell them which field is wrong."""
    client, s, _ = hub
    for stranger in ({}, _key(client, s, "bob")):
        r = client.post("/v1/operators", content=b'{"username": 7}', headers=stranger)
        assert r.status_code in (401, 403), r.text
        assert r.json()["error"] in ("unauthorized", "forbidden")
