"""TPM enrollment end to end: SIMULATED TPMs (swtpm with EK certificates from a local
maker CA) against a real hub over HTTP. Nothing is mocked: the TPMs do ActivateCredential,
Certify and Quote; the hub does MakeCredential and checks every signature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning.errors import ProvisioningError
from provisioning.swtpm import EkCa, SwtpmProcess, manufacture, swtpm_available
from tests.conftest import missing, require_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def maker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EkCa, list[SwtpmProcess]]]:
    """Two SIMULATED TPMs from one (local, test) TPM maker CA."""
    if not swtpm_available() or shutil.which("swtpm_setup") is None:
        missing("swtpm and swtpm_setup are not installed (apt install swtpm swtpm-tools)")
    require_module("tpm2_pytss", "tpm2-pytss is not installed (uv sync --extra tpm)")
    root = tmp_path_factory.mktemp("tpm-maker")
    ca = EkCa(root / "ca")
    tpms = []
    for name in ("a", "b"):
        manufacture(root / name, ca)
        tpms.append(SwtpmProcess(root / name).start())
    yield ca, tpms
    for t in tpms:
        t.stop()


@pytest.fixture
def hub(tmp_path: Path, maker: tuple[EkCa, list[SwtpmProcess]]) -> Iterator[Any]:
    from cloud_sync.server import HubServer
    from cloud_sync.settings import HubSettings

    data = tmp_path / "hub"
    (data / "ek-ca").mkdir(parents=True)
    for cert in maker[0].cert_paths:
        shutil.copy(cert, data / "ek-ca" / cert.name)
    server = HubServer(HubSettings.create(data, open_reads=True)).start()
    yield server
    server.stop()


def _token(hub: Any, ttl_s: int = 3600) -> str:
    r = httpx.post(
        f"{hub.url}/v1/enrollment-tokens",
        json={"site": "plant-1", "ttl_s": ttl_s},
        headers={"authorization": f"Bearer {hub.settings.admin_token}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _identity(tpm: SwtpmProcess) -> Any:
    from provisioning.tpm_identity import TpmIdentity

    return TpmIdentity(tpm.tcti)


def _start(hub: Any, token: str, evidence: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{hub.url}/v1/enroll/start", json={"token": token, "name": "gw-1", **evidence}
    )


def _finish(hub: Any, ident: Any, start: dict[str, Any], **change: Any) -> httpx.Response:
    """Finish as an honest device would, with ``change`` applied (a tampering device)."""
    secret = ident.activate(
        base64.b64decode(start["credential_blob"]), base64.b64decode(start["encrypted_secret"])
    )
    nonce = change.pop("nonce", base64.b64decode(start["nonce"]))
    attest, sig = ident.certify(nonce)
    attest = change.pop("certify_attest", lambda a: a)(attest)
    quote = ident.quote(nonce)
    body = {
        "session": start["session"],
        "secret": base64.b64encode(change.pop("secret", secret)).decode(),
        "certify": {
            "attest": base64.b64encode(attest).decode(),
            "signature": base64.b64encode(sig).decode(),
        },
        "quote": quote.as_json(),
    }
    return httpx.post(f"{hub.url}/v1/enroll/finish", json=body)


def test_a_tpm_enrolls_once_and_a_rerun_changes_nothing(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]], tmp_path: Path
) -> None:
    from provisioning.enroll import enroll

    token = _token(hub)
    steps: list[str] = []
    with _identity(maker[1][0]) as ident:
        done, changed = enroll(
            ident, hub.url, token, name="gw-1", state_dir=tmp_path / "st", progress=steps.append
        )
        assert changed
        again, changed_again = enroll(ident, hub.url, token, name="gw-1", state_dir=tmp_path / "st")
    assert not changed_again and again == done
    assert "activating the hub's credential in the TPM" in steps
    device = httpx.get(f"{hub.url}/v1/devices/{done.utid}").json()
    assert device["key_kind"] == "tpm"
    assert "factoryops-key:tpm" in done.certificate().subject.rfc4514_string()
    assert (tmp_path / "st" / "device-cert.pem").read_text() == done.certificate_pem
    # the token is spent: a second TPM cannot use it
    with _identity(maker[1][1]) as other, pytest.raises(ProvisioningError, match="token_used"):
        enroll(other, hub.url, token, name="gw-2", state_dir=tmp_path / "st2")


def test_an_enrollment_cut_off_after_the_hub_committed_completes_with_the_same_token(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]], tmp_path: Path
) -> None:
    """Ctrl-C after the hub burnt the token but before the gateway wrote its certificate:
    the rerun proves possession of the same TPM key again and gets the same identity; the
    spent token still buys nothing for another TPM."""
    from provisioning.enroll import enroll

    token = _token(hub)
    with _identity(maker[1][0]) as ident:
        first, _ = enroll(ident, hub.url, token, name="gw-1", state_dir=tmp_path / "st")
        shutil.rmtree(tmp_path / "st")  # as if the run died before writing anything
        again, changed = enroll(ident, hub.url, token, name="gw-1", state_dir=tmp_path / "st")
    assert changed and again.utid == first.utid
    assert again.certificate_pem == first.certificate_pem
    assert (tmp_path / "st" / "device-cert.pem").read_text() == first.certificate_pem
    with _identity(maker[1][1]) as other, pytest.raises(ProvisioningError, match="token_used"):
        enroll(other, hub.url, token, name="gw-2", state_dir=tmp_path / "st2")
    actions = [e["action"] for e in _audit(hub)]
    assert actions.count("device.enroll") == 1 and actions.count("device.enroll.resume") == 1


def _audit(hub: Any) -> list[dict[str, Any]]:
    from cloud_sync.access import Access
    from cloud_sync.storage import Store

    store = Store.open(hub.settings.db_url)
    try:
        return Access(store.engine, hub.settings.admin_token, time.time_ns).audit_entries()
    finally:
        store.close()


def test_an_expired_or_unknown_token_is_refused_with_the_fix(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]], tmp_path: Path
) -> None:
    from cloud_sync.enroll import new_enrollment_token
    from cloud_sync.storage import Store
    from provisioning.enroll import enroll

    store = Store.open(hub.settings.db_url)
    old = new_enrollment_token(store, site="x", ttl_s=60, now_ns=time.time_ns() - 120 * 10**9)
    store.close()
    with _identity(maker[1][0]) as ident:
        with pytest.raises(ProvisioningError, match="token_expired") as err:
            enroll(ident, hub.url, old, name="gw", state_dir=tmp_path)
        assert "new token" in err.value.hint
        with pytest.raises(ProvisioningError, match="token_unknown"):
            enroll(ident, hub.url, "fo-enroll-" + "x" * 32, name="gw", state_dir=tmp_path)
    assert not (tmp_path / "enrollment.json").exists()  # nothing half-written


def test_a_tpm_from_an_untrusted_maker_is_refused(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]]
) -> None:
    for cert in (hub.settings.data_dir / "ek-ca").iterdir():
        cert.unlink()
    with _identity(maker[1][0]) as ident:
        ident.ensure_keys()
        r = _start(hub, _token(hub), ident.evidence().as_json())
    assert r.status_code == 403 and r.json()["error"] == "untrusted_ek"


def test_another_tpms_ek_cannot_vouch_for_this_tpms_keys(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]]
) -> None:
    from attestation.signers.tpm import TpmError

    a, b = maker[1]
    with _identity(b) as ident_b:
        ident_b.ensure_keys()
        ev_b = ident_b.evidence().as_json()
    with _identity(a) as ident_a:
        ident_a.ensure_keys()
        ev_a = ident_a.evidence().as_json()
        mixed = {**ev_a, "ek_cert": ev_b["ek_cert"], "ek_public": ev_b["ek_public"]}
        start = _start(hub, _token(hub), mixed).json()
        with pytest.raises(TpmError, match="activate the credential"):
            ident_a.activate(
                base64.b64decode(start["credential_blob"]),
                base64.b64decode(start["encrypted_secret"]),
            )
        # guessing the secret instead does not help either
        r = _finish(
            hub,
            ident_a,
            _start(hub, _token(hub), ev_a).json() | {"session": start["session"]},
            secret=secrets.token_bytes(32),
        )
    assert r.status_code == 401 and r.json()["error"] == "activation_failed"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"nonce": b"\x01" * 32}, "wrong_nonce"),
        ({"certify_attest": lambda a: a[:-1] + bytes([a[-1] ^ 1])}, "bad_attestation"),
    ],
    ids=["wrong-nonce", "tampered-certify"],
)
def test_a_wrong_nonce_or_a_tampered_certify_is_refused(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]], change: dict[str, Any], error: str
) -> None:
    with _identity(maker[1][0]) as ident:
        ident.ensure_keys()
        start = _start(hub, _token(hub), ident.evidence().as_json()).json()
        r = _finish(hub, ident, start, **change)
    assert r.status_code == 401 and r.json()["error"] == error, r.text
    assert httpx.get(f"{hub.url}/v1/devices").json()["devices"] == []  # nothing enrolled


def test_an_enrolled_device_uploads_only_with_a_fresh_token_until_revoked(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]], tmp_path: Path
) -> None:
    from attestation.signers.tpm import TpmSigner
    from cloud_sync.enroll import auth_message
    from tests.hubkit import Device, body

    with _identity(maker[1][1]) as ident:
        from provisioning.enroll import enroll

        done, _ = enroll(ident, hub.url, _token(hub), name="gw-b", state_dir=tmp_path)
    signer = TpmSigner.open(maker[1][1].tcti, create=False)
    try:
        device = Device(signer)
        cose, leaves, _ = device.window(5)
        upload = body((cose, leaves))
        headers = {"content-type": "application/cbor"}
        r = httpx.post(f"{hub.url}/v1/proofs", content=upload, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "token_required"

        challenge = base64.b64decode(
            httpx.post(f"{hub.url}/v1/devices/{done.utid}/challenge").json()["challenge"]
        )
        answer = {
            "challenge": base64.b64encode(challenge).decode(),
            "signature": base64.b64encode(signer.sign(auth_message(done.utid, challenge))).decode(),
        }
        got = httpx.post(f"{hub.url}/v1/devices/{done.utid}/token", json=answer)
        assert got.status_code == 200, got.text
        replay = httpx.post(f"{hub.url}/v1/devices/{done.utid}/token", json=answer)
        assert replay.json()["error"] == "challenge_invalid"  # a challenge buys one token

        auth = headers | {"authorization": f"Bearer {got.json()['token']}"}
        ok = httpx.post(f"{hub.url}/v1/proofs", content=upload, headers=auth)
        assert ok.status_code == 200 and ok.json()["results"][0]["status"] == "accepted"

        # its chain head (ADR 0027): a TPM device asks with its token, as the agent does
        bare = httpx.get(f"{hub.url}/v1/devices/{done.utid}/head")
        assert bare.status_code == 401 and bare.json()["error"] == "token_required"
        from agent.recover import fetch_head

        head = asyncio.run(fetch_head(hub.url, signer, 10.0))
        assert (head.window, head.last_seq) == (0, 4)
        assert head.head_hash == hashlib.sha256(cose).digest()

        admin = {"authorization": f"Bearer {hub.settings.admin_token}"}
        assert httpx.post(f"{hub.url}/v1/devices/{done.utid}/revoke", headers=admin).is_success
        cose, leaves, _ = device.window(5)
        refused = httpx.post(f"{hub.url}/v1/proofs", content=body((cose, leaves)), headers=auth)
        assert refused.status_code == 401 and refused.json()["error"] == "token_invalid"
    finally:
        signer.close()


def test_an_admin_cannot_register_a_tpm_key_by_claim(hub: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    r = httpx.post(
        f"{hub.url}/v1/devices",
        json={"public_key_pem": pem, "key_kind": "tpm", "name": "claimed"},
        headers={"authorization": f"Bearer {hub.settings.admin_token}"},
    )
    assert r.status_code == 403 and r.json()["error"] == "enroll_required"


def test_the_field_technician_cli_inits_enrolls_and_diagnoses(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from factoryops.cli import cli

    tpm, state = maker[1][1], str(tmp_path / "state")
    run = CliRunner().invoke
    init = run(cli, ["provision", "init", "--tcti", tpm.tcti])
    assert init.exit_code == 0, init.output
    utid = init.output.strip().splitlines()[-1]
    assert utid.startswith("utid:")
    assert run(cli, ["provision", "init", "--tcti", tpm.tcti]).output.count("kept") == 2

    status = run(cli, ["provision", "status", "--tcti", tpm.tcti, "--state-dir", state])
    assert status.exit_code == 1 and "fix: run `provision enroll`" in status.output

    args = ["--tcti", tpm.tcti, "--state-dir", state, "--hub", hub.url]
    enrolled = run(cli, ["provision", "enroll", *args, "--token", _token(hub), "--name", "gw-cli"])
    assert enrolled.exit_code == 0, enrolled.output
    assert f"enrolled: {utid}" in enrolled.output
    again = run(cli, ["provision", "enroll", *args, "--token", "fo-enroll-unused-token"])
    assert "already enrolled" in again.output  # idempotent: no token spent, nothing changed

    diagnose = run(cli, ["provision", "diagnose", *args])
    assert diagnose.exit_code == 0, diagnose.output
    assert "FAIL" not in diagnose.output and "knows this device" in diagnose.output

    dead = run(
        cli,
        [
            "provision",
            "diagnose",
            "--tcti",
            tpm.tcti,
            "--state-dir",
            state,
            "--hub",
            "http://127.0.0.1:9",
        ],
    )
    assert dead.exit_code == 1 and "fix: check the URL" in dead.output


def test_no_tpm_is_a_one_line_reason_with_a_fix() -> None:
    import subprocess
    import sys

    require_module("tpm2_pytss", "tpm2-pytss is not installed (uv sync --extra tpm)")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "factoryops", "provision", "init", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    r = run("--tcti", "swtpm:host=127.0.0.1,port=9")
    assert r.returncode == 1
    assert "error: no TPM answers at swtpm:host=127.0.0.1,port=9" in r.stderr
    assert "hint: check the TPM" in r.stderr
    bad = run("--tcti", "bogus")
    assert bad.returncode == 1 and "is not 'device:/dev/tpmrm0'" in bad.stderr


@pytest.fixture
def fresh_tpm(tmp_path: Path, maker: tuple[EkCa, list[SwtpmProcess]]) -> Iterator[SwtpmProcess]:
    """A TPM of its own, for tests that change its owner auth or fill its storage."""
    manufacture(tmp_path / "tpm", maker[0])
    tpm = SwtpmProcess(tmp_path / "tpm").start()
    yield tpm
    tpm.stop()


def test_a_wrong_owner_auth_and_a_full_nv_say_what_to_do(fresh_tpm: SwtpmProcess) -> None:
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

    from attestation.signers.tpm import TpmError, open_esapi, persistent_handles
    from provisioning.tpm_identity import TpmIdentity

    esapi, tcti = open_esapi(fresh_tpm.tcti)
    esapi.hierarchy_change_auth(ESYS_TR.OWNER, b"plant-secret")
    esapi.close()
    tcti.close()
    with TpmIdentity(fresh_tpm.tcti) as ident, pytest.raises(TpmError) as err:
        ident.ensure_keys()
    assert "wrong owner authorization" in str(err.value) and "--owner-auth" in err.value.hint

    # fill the TPM's persistent storage with other keys, as an old install might have
    esapi, tcti = open_esapi(fresh_tpm.tcti, owner_auth="plant-secret")
    public = TPM2B_PUBLIC.parse(
        "ecc256:ecdsa-sha256",
        objectAttributes=TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.SIGN_ENCRYPT,
    )
    filler = 0x81000200
    try:
        while True:
            t, *_ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), public, ESYS_TR.OWNER)
            try:
                esapi.evict_control(ESYS_TR.OWNER, t, filler)
            finally:
                esapi.flush_context(t)
            filler += 1
    except TSS2_Exception:
        pass  # NV is full
    assert len(persistent_handles(esapi)) > 2
    esapi.close()
    tcti.close()
    with TpmIdentity(fresh_tpm.tcti, owner_auth="plant-secret") as ident:
        with pytest.raises(TpmError) as full:
            ident.ensure_keys()
        assert "persistent storage (NV) is full" in str(full.value)
        assert "tpm2_evictcontrol" in full.value.hint
        assert ident.has_keys() == {"signing_key": False, "ak": False}  # nothing half-made


def test_a_hub_that_is_down_changes_nothing_and_a_rerun_enrolls(
    hub: Any, maker: tuple[EkCa, list[SwtpmProcess]], tmp_path: Path
) -> None:
    from provisioning.enroll import enroll

    state = tmp_path / "state"
    with _identity(maker[1][0]) as ident:
        with pytest.raises(ProvisioningError, match="cannot reach the hub") as err:
            enroll(ident, "http://127.0.0.1:9", "fo-enroll-x", name="gw", state_dir=state)
        assert "rerun when it is up" in err.value.hint
        assert not state.exists()  # nothing half-written
        done, changed = enroll(ident, hub.url, _token(hub), name="gw", state_dir=state)
    assert done.hub_url == hub.url
    assert changed and (state / "enrollment.json").exists()
