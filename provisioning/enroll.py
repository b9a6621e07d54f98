"""The device's half of enrollment, over HTTP: evidence -> activate -> certify + quote.

``enroll`` is idempotent: a device already enrolled with this hub and key does nothing
(and spends no token); a run cut off half-way leaves nothing behind but the TPM keys,
which the next run reuses. Files are written only at the end, each atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from attestation.durable import write_atomically
from attestation.utid import utid_bytes, utid_text
from provisioning.errors import ProvisioningError
from provisioning.hubcall import post_json
from provisioning.tpm_identity import TpmIdentity, b64, unb64

__all__ = ["Enrollment", "enroll", "read_enrollment"]

STATE_FILE = "enrollment.json"
Progress = Callable[[str], None]

_FIXES = {
    "token_unknown": "check the token, or ask the hub admin for a new one (factoryops hub"
    " enroll-token)",
    "token_used": "each token enrolls one device once: ask the hub admin for a new one",
    "token_expired": "ask the hub admin for a new token",
    "untrusted_ek": "the hub does not trust this TPM's maker: the admin puts the maker's CA"
    " certificate in the hub's ek-ca/ folder",
    "ek_mismatch": "the TPM's EK does not match its certificate: do not use this TPM",
    "activation_failed": "the TPM could not prove it holds the EK: run provision diagnose",
    "wrong_nonce": "rerun provision enroll (the session is started afresh)",
    "bad_attestation": "rerun provision enroll; if it persists, run provision diagnose",
    "pcr_policy": "this gateway's boot measurements differ from the hub's policy:"
    " check firmware/boot changes with the hub admin",
    "revoked_device": "this key was revoked: clear it (tpm2_evictcontrol) and run provision"
    " init again",
    "session_invalid": "the enrollment took too long: rerun provision enroll",
    "enrollment_unavailable": "the hub was installed without TPM support (the tpm extra)",
}


@dataclass(frozen=True, slots=True)
class Enrollment:
    utid: str
    hub_url: str
    certificate_pem: str
    fleet_ca_pem: str
    log_vkey: str
    pcrs: dict[str, str]
    enrolled_at: str

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode())


def read_enrollment(state_dir: Path) -> Enrollment | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        return Enrollment(**doc)
    except (ValueError, TypeError) as err:
        raise ProvisioningError(
            f"{path} is damaged: {err}", hint=f"move it aside and rerun provision enroll: {path}"
        ) from err


def _post(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return post_json(
        client, url, body, what="enrollment", fixes=_FIXES, default_fix="see docs/enrollment.md"
    )


def enroll(
    identity: TpmIdentity,
    hub_url: str,
    token: str,
    *,
    name: str,
    state_dir: Path,
    progress: Progress = lambda _: None,
    timeout_s: float = 15.0,
) -> tuple[Enrollment, bool]:
    """Enroll this TPM's signing key with the hub; returns (enrollment, changed)."""
    hub_url = hub_url.rstrip("/")
    progress("checking the TPM keys")
    identity.ensure_keys()
    evidence = identity.evidence()
    from tpm2_pytss.types import TPM2B_PUBLIC  # noqa: PLC0415 - the tpm extra

    key, _ = TPM2B_PUBLIC.unmarshal(evidence.key_public)
    utid = utid_text(utid_bytes(key.publicArea.to_der()))
    done = read_enrollment(state_dir)
    if done is not None and done.utid == utid and done.hub_url == hub_url:
        progress("already enrolled with this hub: nothing to do")
        return done, False
    with httpx.Client(timeout=timeout_s) as client:
        progress("sending the EK certificate and key evidence")
        start = _post(
            client,
            f"{hub_url}/v1/enroll/start",
            {"token": token, "name": name, **evidence.as_json()},
        )
        progress("activating the hub's credential in the TPM")
        secret = identity.activate(
            unb64(start["credential_blob"], "credential_blob"),
            unb64(start["encrypted_secret"], "encrypted_secret"),
        )
        nonce = unb64(start["nonce"], "nonce")
        progress("certifying the signing key and quoting the PCRs")
        attest, sig = identity.certify(nonce)
        quote = identity.quote(nonce)
        done_doc = _post(
            client,
            f"{hub_url}/v1/enroll/finish",
            {
                "session": start["session"],
                "secret": b64(secret),
                "certify": {"attest": b64(attest), "signature": b64(sig)},
                "quote": quote.as_json(),
            },
        )
    if done_doc.get("utid") != utid:
        raise ProvisioningError(f"the hub enrolled {done_doc.get('utid')}, expected {utid}")
    result = Enrollment(
        utid=utid,
        hub_url=hub_url,
        certificate_pem=str(done_doc["certificate_pem"]),
        fleet_ca_pem=str(done_doc["fleet_ca_pem"]),
        log_vkey=str(done_doc["log_vkey"]),
        pcrs=dict(done_doc.get("pcrs", {})),
        enrolled_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    progress("writing the device certificate")
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(state_dir / "device-cert.pem", result.certificate_pem.encode())
    write_atomically(state_dir / "fleet-ca.pem", result.fleet_ca_pem.encode())
    write_atomically(state_dir / "hub-log.vkey", result.log_vkey.encode())
    write_atomically(
        state_dir / STATE_FILE, json.dumps(dataclasses.asdict(result), indent=2).encode()
    )
    return result, True
