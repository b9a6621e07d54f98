"""Key rotation: a device moves to a new key and the hub links the two UTIDs (ADR 0038).

``POST /v1/devices/{utid}/rotate``: both keys sign ``rotation_message`` (the old one consents,
the new one proves possession), the message binds the chain head the gateway holds, and a
TPM device's new key is certified by the AK its first key was enrolled with, over that
message. The hub then, in one transaction, revokes the old device (``rotated_to``) and adds the
new one continuing the old one's chain head (``rotated_from``): the next proof, signed by the
new key, chains onto the last proof of the old key.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from attestation.device_auth import rotation_message
from attestation.microproof import GENESIS_PREV
from attestation.utid import utid_bytes, utid_text
from cloud_sync.access import client_ip
from cloud_sync.enroll import (
    b64_field,
    check_attest,
    check_key_attributes,
    spki_of,
    tpm_modules,
    unmarshal,
    utc,
)
from cloud_sync.errors import ApiError
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.devices import der_to_pem, device_json, p256_spki
from cloud_sync.routes.request import Utid, body_doc, device_or_404, json_body, model_schema
from cloud_sync.storage import DeviceRow
from cloud_sync.storage.enrollment import DeviceTokenRepo, EnrollmentRepo

__all__ = ["KeyRotation", "router"]

_B64_MAX = 8192  # TPM public areas and attestations are a few hundred bytes


class _Signed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attest: str = Field(max_length=_B64_MAX)
    signature: str = Field(max_length=_B64_MAX)


class KeyRotation(BaseModel):
    """Body of POST /v1/devices/{utid}/rotate (docs/protocol.md, ADR 0038)."""

    model_config = ConfigDict(extra="forbid")
    public_key_pem: str | None = Field(default=None, max_length=4096)  # a software key
    key_public: str | None = Field(default=None, max_length=_B64_MAX)  # TPM2B_PUBLIC, base64
    head_window: int = Field(ge=-1)
    head_hash: str = Field(pattern="^[0-9a-f]{64}$")
    old_signature: str = Field(max_length=128)  # ES256 r||s, base64
    new_signature: str = Field(max_length=128)
    certify: _Signed | None = None  # TPM: Certify of the new key by the enrolled AK


def _verify(public_key_der: bytes, sig_b64: str, message: bytes, field: str) -> None:
    key = serialization.load_der_public_key(public_key_der)
    sig = b64_field(sig_b64, field)
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(sig) != 64:
        raise ApiError(401, "bad_signature", f"{field} must be ES256 r||s (64 bytes)")
    der = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
    try:
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as err:
        raise ApiError(401, "bad_signature", f"{field}: not signed by that key") from err


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()
    store, limit = deps.store, deps.settings.limits.max_json_bytes

    def enrolled_ak(device: DeviceRow) -> Any:
        """The AK the device's first key was enrolled with (rotations keep the same TPM)."""
        types, _, _ = tpm_modules()
        repo = EnrollmentRepo(store.engine)
        utid: str | None = device.utid
        while utid is not None:
            ak = repo.enrolled_ak(utid)
            if ak is not None:
                return unmarshal(types.TPM2B_PUBLIC, ak, "ak_public")
            found = store.device(utid)
            utid = found.rotated_from if found is not None else None
        raise ApiError(
            403,
            "enroll_required",
            f"the hub holds no finished TPM enrollment of {device.utid} (enrolled before the"
            " hub kept them?): enroll the gateway again with a new token",
        )

    def new_key(req: KeyRotation, device: DeviceRow) -> tuple[bytes, Any]:
        """The new key's SubjectPublicKeyInfo (and its TPM public area for a TPM device)."""
        if device.key_kind == "software":
            if req.public_key_pem is None or req.key_public is not None:
                raise ApiError(422, "invalid_request", "a software device sends public_key_pem")
            return p256_spki(req.public_key_pem), None
        if req.key_public is None or req.certify is None:
            raise ApiError(422, "invalid_request", "a TPM device sends key_public and its certify")
        types, _, _ = tpm_modules()
        public = unmarshal(types.TPM2B_PUBLIC, b64_field(req.key_public, "key_public"), "key")
        check_key_attributes(public, "key_public", restricted=False)
        return spki_of(public), public

    @api.post(
        "/v1/devices/{utid}/rotate",
        operation_id="rotateDeviceKey",
        openapi_extra=body_doc(model_schema(KeyRotation)),
    )
    async def rotate_key(utid: Utid, request: Request) -> dict[str, Any]:
        """The device moves to a new key: both keys sign, the hub links the two UTIDs."""
        req = await json_body(request, KeyRotation, limit)
        device = device_or_404(store, utid)
        spki, public = new_key(req, device)
        new_utid = utid_text(utid_bytes(spki))
        if device.revoked:
            if device.rotated_to == new_utid:  # a rerun after the answer was lost
                done = store.device(new_utid)
                assert done is not None  # written in the same transaction as rotated_to
                return _answer(deps, done)
            raise ApiError(403, "revoked_device", f"{utid} is revoked: it cannot rotate")
        if new_utid == device.utid:
            raise ApiError(422, "same_key", "the new key is the key the device has")
        if store.device(new_utid) is not None:
            raise ApiError(409, "key_in_use", f"{new_utid} is enrolled already")
        hub_hash = device.head_hash or GENESIS_PREV
        if req.head_window != device.head_window or bytes.fromhex(req.head_hash) != hub_hash:
            raise ApiError(
                409,
                "head_mismatch",
                f"the gateway's chain head is window {req.head_window}, the hub's is window"
                f" {device.head_window}: upload the backlog first (start the agent until its"
                " status shows no backlog), then rotate",
            )
        message = rotation_message(device.utid, new_utid, device.head_window, hub_hash)
        _verify(device.public_key, req.old_signature, message, "old_signature")
        _verify(spki, req.new_signature, message, "new_signature")
        if public is not None:
            assert req.certify is not None  # checked with the key above
            certified = check_attest(
                b64_field(req.certify.attest, "certify.attest"),
                b64_field(req.certify.signature, "certify.signature"),
                enrolled_ak(device),
                hashlib.sha256(message).digest(),
                "certify",
                "certify",
            )
            if bytes(certified.attested.certify.name) != bytes(public.get_name()):
                raise ApiError(401, "bad_attestation", "certify: the AK certified another key")
        now = deps.now_ns()
        cert = deps.fleet.issue(spki, device.key_kind, now=utc(now))
        done = store.rotate_device(
            device, utid=new_utid, public_key=spki, certificate=cert, now_ns=now
        )
        if done is None:
            raise ApiError(409, "head_mismatch", "the device uploaded or rotated meanwhile")
        DeviceTokenRepo(store.engine).drop_tokens(device.utid)
        deps.access.audit(
            f"device:{device.utid}",
            "device.rotate",
            new_utid,
            {"site": device.site, "from": device.utid, "head_window": device.head_window},
            client_ip(request),
        )
        return _answer(deps, done)

    return api


def _answer(deps: HubDeps, device: DeviceRow) -> dict[str, Any]:
    return {
        **device_json(device),
        "certificate_pem": der_to_pem(device.certificate),
        "fleet_ca_pem": deps.fleet.pem(),
        "log_vkey": deps.log.verifier.to_vkey(),
    }
