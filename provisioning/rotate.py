"""Key rotation, the gateway's half: a new device key, signed over by both keys, linked by
the hub to the old UTID; then the old key is retired (ADR 0038).

The steps, each rerunnable after a cut:

1. stage the new key: a software key in ``<key_file>.rotating`` (mode 0600), a TPM key as a
   primary at ``ROTATION_HANDLE`` made from a template with 32 random ``unique`` bytes, kept
   in ``<state_dir>/rotation.json`` so the same key can be made again;
2. both keys sign ``rotation_message`` (the old one consents, the new one proves it holds
   the key); a TPM's AK certifies the new key over SHA-256 of the message;
3. ``POST /v1/devices/{old}/rotate``: the hub checks all of it and the chain head, revokes the
   old device and adds the new one continuing its chain, in one transaction;
4. only after the hub's answer: the new key takes the old one's place (the old software key
   is kept as ``<key_file>.retired-<utid>``; the old TPM key is evicted) and the new
   certificate is written.

A refusal or an unreachable hub before step 3 is answered discards the staged key: nothing
has changed. A cut after the hub answered is finished by running the command again (the hub
answers a repeated rotation to the same key with the same certificate).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives import serialization

from attestation.device_auth import rotation_message
from attestation.durable import write_atomically
from attestation.signers.base import Signer
from attestation.signers.software import SoftwareSigner
from attestation.utid import utid_bytes, utid_text
from provisioning.errors import ProvisioningError
from provisioning.hubcall import post_json

__all__ = [
    "ChainHead",
    "KeyStage",
    "Rotated",
    "SoftwareKeyStage",
    "TpmKeyStage",
    "rotate",
]

_ENROLLMENT_FILE = "enrollment.json"  # provisioning.enroll.STATE_FILE (that module needs tpm2)
ROTATION_FILE = "rotation.json"  # a TPM rotation under way: the new key's template unique
Progress = Callable[[str], None]

_FIXES = {
    "head_mismatch": "the hub has not got every window yet: start the agent until `factoryops"
    " agent status` shows no backlog, stop it, and rotate again",
    "revoked_device": "this device is revoked at the hub: enroll it again with a new token",
    "key_in_use": "the new key is another device's: run rotate again (a new key is made)",
    "enroll_required": "enroll the gateway with `factoryops provision enroll` first",
    "unknown_device": "the hub does not know this device: enroll or register it first",
    "bad_attestation": "the AK did not certify the new key: run `provision diagnose`",
    "bad_signature": "a signature did not verify: check [device] in the agent config",
}


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last window the gateway's spool sealed and its hash (window -1: none)."""

    window: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Rotated:
    old_utid: str
    new_utid: str
    head_window: int
    certificate_pem: str
    retired: str  # what happened to the old key


class KeyStage(Protocol):
    """A new device key waiting for the hub (one per keystore)."""

    kind: str

    def create(self) -> Signer:
        """Make (or find, on a rerun) the new key; its signer."""
        ...

    def evidence(self, message: bytes) -> dict[str, Any]:
        """What the hub needs besides the signatures to accept the new key."""
        ...

    def promote(self, old_utid: str) -> str:
        """The new key replaces the old one; says what became of the old key."""
        ...

    def discard(self) -> None:
        """Forget the staged key (the hub refused, or was never reached)."""
        ...


@dataclass
class SoftwareKeyStage:
    """A development key file: the new key beside it until the hub has answered."""

    key_file: Path
    kind: str = "software"

    @property
    def staged(self) -> Path:
        return self.key_file.with_name(self.key_file.name + ".rotating")

    def create(self) -> Signer:
        return SoftwareSigner.load_or_create(self.staged)

    def evidence(self, message: bytes) -> dict[str, Any]:
        der = SoftwareSigner.load(self.staged).public_key_der()
        key = serialization.load_der_public_key(der)
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"public_key_pem": pem.decode()}

    def promote(self, old_utid: str) -> str:
        retired = self.key_file.with_name(f"{self.key_file.name}.retired-{old_utid[5:17]}")
        if self.staged.exists():
            if self.key_file.exists():
                os.replace(self.key_file, retired)
            os.replace(self.staged, self.key_file)
        return f"old key kept as {retired} (no longer accepted by the hub)"

    def discard(self) -> None:
        self.staged.unlink(missing_ok=True)


@dataclass
class TpmKeyStage:
    """A TPM key made as a primary from a template with random ``unique`` bytes, so the same
    key can be made again at the device key's handle once the hub has linked it."""

    tcti: str
    state_dir: Path
    owner_auth: str | None = None
    kind: str = "tpm"
    _unique: bytes = b""

    @property
    def _record(self) -> Path:
        return self.state_dir / ROTATION_FILE

    def create(self) -> Signer:
        from attestation.signers.tpm import ROTATION_HANDLE, TpmSigner  # noqa: PLC0415 - the tpm extra

        if self._record.exists():  # a rotation under way: the same new key
            self._unique = bytes.fromhex(json.loads(self._record.read_text())["unique"])
        else:
            self._unique = secrets.token_bytes(32)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self._record, json.dumps({"unique": self._unique.hex()}).encode())
        with self._identity() as ident:
            ident.stage_key(self._unique, ROTATION_HANDLE)
        return TpmSigner.open(self.tcti, handle=ROTATION_HANDLE, create=False)

    def evidence(self, message: bytes) -> dict[str, Any]:
        from attestation.signers.tpm import ROTATION_HANDLE  # noqa: PLC0415 - the tpm extra

        with self._identity() as ident:
            public = ident.public_area(ROTATION_HANDLE)
            attest, sig = ident.certify(hashlib.sha256(message).digest(), ROTATION_HANDLE)
        return {
            "key_public": _b64(public),
            "certify": {"attest": _b64(attest), "signature": _b64(sig)},
        }

    def promote(self, old_utid: str) -> str:
        with self._identity() as ident:
            ident.promote_key(self._unique)
        self._record.unlink(missing_ok=True)
        return "old key evicted from the TPM (no longer accepted by the hub)"

    def discard(self) -> None:
        from attestation.signers.tpm import ROTATION_HANDLE  # noqa: PLC0415 - the tpm extra

        with self._identity() as ident:
            ident.drop_key(ROTATION_HANDLE)
        self._record.unlink(missing_ok=True)

    def _identity(self) -> Any:
        from provisioning.tpm_identity import TpmIdentity  # noqa: PLC0415 - the tpm extra

        return TpmIdentity(self.tcti, owner_auth=self.owner_auth)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _utid(signer: Signer) -> str:
    return utid_text(utid_bytes(signer.public_key_der()))


def _post(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    with httpx.Client(timeout=timeout_s) as client:
        return post_json(
            client,
            url,
            body,
            what="the rotation",
            fixes={code: f"{fix}; nothing was changed" for code, fix in _FIXES.items()},
            default_fix="see docs/enrollment.md, key rotation; nothing was changed",
        )


def rotate(
    open_old: Callable[[], Signer],
    stage: KeyStage,
    hub_url: str,
    head: ChainHead,
    *,
    state_dir: Path,
    progress: Progress = lambda _: None,
    timeout_s: float = 15.0,
) -> Rotated:
    """Move the device from its key (``open_old`` opens its signer) to a new one staged by
    ``stage`` (the module's steps 1-4); ``head`` is the spool's chain head. One key is open at
    a time: a TPM serves one connection (swtpm's socket, /dev/tpm0 without a resource
    manager)."""
    old_utid, old_sig = "", b""
    progress(f"making the new {stage.kind} key")
    new = stage.create()
    try:
        new_utid = _utid(new)
        old = open_old()
        try:
            old_utid = _utid(old)
        finally:
            _close(old)
        message = rotation_message(old_utid, new_utid, head.window, head.hash)
        progress(f"signing the move to {new_utid} with the new key and the old one")
        new_sig = new.sign(message)
    finally:
        _close(new)
    body = {**stage.evidence(message), "head_window": head.window, "head_hash": head.hash.hex()}
    old = open_old()
    try:
        old_sig = old.sign(message)
    finally:
        _close(old)
    body |= {"old_signature": _b64(old_sig), "new_signature": _b64(new_sig)}
    progress(f"asking the hub to link {new_utid} to {old_utid}")
    try:
        doc = _post(f"{hub_url.rstrip('/')}/v1/devices/{old_utid}/rotate", body, timeout_s)
    except ProvisioningError:
        stage.discard()
        raise
    if doc.get("utid") != new_utid:
        stage.discard()
        raise ProvisioningError(f"the hub linked {doc.get('utid')}, expected {new_utid}")
    progress("retiring the old key")
    retired = stage.promote(old_utid)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(state_dir / "device-cert.pem", str(doc["certificate_pem"]).encode())
    write_atomically(state_dir / "fleet-ca.pem", str(doc["fleet_ca_pem"]).encode())
    _update_enrollment(state_dir, new_utid, str(doc["certificate_pem"]))
    return Rotated(old_utid, new_utid, head.window, str(doc["certificate_pem"]), retired)


def _close(signer: Signer) -> None:
    close = getattr(signer, "close", None)
    if close is not None:
        close()


def _update_enrollment(state_dir: Path, utid: str, certificate_pem: str) -> None:
    """A TPM gateway's enrollment record names the new key from now on."""
    if not (state_dir / _ENROLLMENT_FILE).exists():
        return  # a development (registered) device has none
    from provisioning.enroll import STATE_FILE, read_enrollment  # noqa: PLC0415 - tpm extra

    done = read_enrollment(state_dir)
    if done is None:
        return
    moved = dataclasses.replace(done, utid=utid, certificate_pem=certificate_pem)
    write_atomically(
        state_dir / STATE_FILE, json.dumps(dataclasses.asdict(moved), indent=2).encode()
    )
