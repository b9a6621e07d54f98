"""The hub's log key in an HSM (SoftHSM2 through PKCS#11): receipts and checkpoints it signs
verify offline, the key survives a hub restart, and it cannot be extracted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from attestation.errors import KeyFileError
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from factoryops.cli import cli
from tests.hubkit import Device, register, upload
from tests.softhsm import MODULE, softhsm_token


@pytest.fixture(scope="module")
def token() -> str:
    """A fresh SoftHSM2 token in this process's private token directory; the key URI."""
    return softhsm_token("hub") + ";object=hub-log"


def test_receipts_signed_in_the_hsm_verify_offline_across_a_restart(
    token: str, tmp_path: Path
) -> None:
    settings = HubSettings.create(
        tmp_path / "hub", allow_software_keys=True, open_reads=True, log_key_uri=token
    )
    hub = HubServer(settings).start()
    try:
        dev = Device()
        utid = register(hub.url, settings.admin_token, dev, "press-1")
        upload(hub.url, *[dev.window(4)[:2] for _ in range(3)])
        first_note = httpx.get(f"{hub.url}/v1/log/checkpoint").text
        hub.stop()
        hub = HubServer(settings, port=hub.port).start()  # the same key is found again
        upload(hub.url, dev.window(4)[:2])
        receipt = tmp_path / "r.json"
        receipt.write_text(
            json.dumps(httpx.get(f"{hub.url}/v1/devices/{utid}/readings/5/receipt").json())
        )
    finally:
        hub.stop()
    assert not (tmp_path / "hub" / "hub-log.key").exists()  # no key file: it is in the token
    result = CliRunner().invoke(
        cli,
        [
            "verify", str(receipt),
            "--trust", str(tmp_path / "hub" / "fleet-ca.pem"),
            "--trust", str(tmp_path / "hub" / "hub-log-key.pem"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "log" in result.output and "VALID" in result.output
    assert first_note.endswith("\n") and "— factoryops.local/hub-log" in first_note


def test_the_key_cannot_leave_the_token_and_a_wrong_pin_says_so(token: str, tmp_path: Path) -> None:
    from pkcs11 import Attribute

    from attestation.signers.pkcs11 import Pkcs11Ed25519Signer

    signer = Pkcs11Ed25519Signer.open(token)
    try:
        assert signer._private[Attribute.EXTRACTABLE] is False
        assert signer._private[Attribute.SENSITIVE] is True
        sig = signer.sign(b"checkpoint")
        signer.public_key().verify(sig, b"checkpoint")  # a real Ed25519 signature
    finally:
        signer.close()
    # PKCS#11 login is per process and this one is logged in: a wrong PIN needs a new one
    wrong = token.replace("pin-value=1234", "pin-value=0000")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "factoryops",
            "hub",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
            "--log-key",
            wrong,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert "cannot open PKCS#11 token 'hub': PinIncorrect" in r.stderr
    assert "hint: check module-path, the token label" in r.stderr
    with pytest.raises(KeyFileError, match="missing object"):
        Pkcs11Ed25519Signer.open(f"pkcs11:module-path={MODULE};token=hub")
