"""Devices: development registration, the device list and records, signed storage policies,
per-reading receipts, and revocation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attestation.cose import decode_sign1
from attestation.errors import MalformedInput
from attestation.microproof import decode_payload
from attestation.receipt import receipt_from_leaves
from attestation.utid import utid_bytes, utid_text
from cloud_sync.access import client_ip
from cloud_sync.enroll import revoke
from cloud_sync.errors import ApiError, HubFault
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import (
    SITE_PATTERN,
    Seq,
    Utid,
    body_doc,
    device_or_404,
    json_body,
    model_schema,
    read_body,
    readable_sites,
    require_content_type,
    visible_device,
)
from cloud_sync.storage import DeviceRow, LeavesMissing

__all__ = ["DeviceRegistration", "der_to_pem", "device_json", "p256_spki", "router"]

MAX_POLICY_BYTES = 4096  # a signed storage policy is a few hundred bytes of COSE


class DeviceRegistration(BaseModel):
    """Body of POST /v1/devices (development registration; see docs/protocol.md)."""

    model_config = ConfigDict(extra="forbid")
    public_key_pem: str = Field(max_length=4096)
    key_kind: str = Field(pattern="^(software|tpm)$")
    name: str = Field(pattern=SITE_PATTERN)
    site: str = Field(default="default", pattern=SITE_PATTERN)


# OpenAPI links from a registration to what can be asked of the new device (stateful fuzzing
# follows them: register, then read, challenge, receipt, revoke)
_UTID = {"utid": "$response.body#/utid"}
_DEVICE_LINKS = {
    "GetDevice": {"operationId": "getDevice", "parameters": _UTID},
    "Challenge": {"operationId": "deviceChallenge", "parameters": _UTID},
    "Receipt": {"operationId": "getReceipt", "parameters": {**_UTID, "seq": 0}},
    "Revoke": {"operationId": "revokeDevice", "parameters": _UTID},
    "Head": {"operationId": "getDeviceHead", "parameters": _UTID},
    "SiteUsage": {"operationId": "siteUsage", "parameters": {"site": "$response.body#/site"}},
    "SiteReport": {"operationId": "siteReport", "parameters": {"site": "$response.body#/site"}},
}


def device_json(d: DeviceRow) -> dict[str, Any]:
    return {
        "utid": d.utid,
        "name": d.name,
        "site": d.site,
        "key_kind": d.key_kind,
        "revoked": d.revoked,
        "windows": d.head_window + 1,
        "last_seq": d.head_last_seq,
        "readings": d.n_readings,
        "last_seen_ns": d.last_seen_ns,
        "rotated_to": d.rotated_to,  # the key this device moved to (ADR 0038)
        "rotated_from": d.rotated_from,
    }


def p256_spki(pem: str) -> bytes:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as err:
        raise ApiError(422, "invalid_request", "public_key_pem is not a PEM public key") from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ApiError(422, "invalid_request", "public_key_pem must be an EC P-256 key")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()
    settings, store, access = deps.settings, deps.store, deps.access

    @api.post(
        "/v1/devices",
        status_code=201,
        responses={200: {"description": "The key was registered before: the same answer"}},
        openapi_extra={
            **body_doc(model_schema(DeviceRegistration)),
            "responses": {"201": {"links": _DEVICE_LINKS}, "200": {"links": _DEVICE_LINKS}},
        },
    )
    async def register_device(request: Request) -> JSONResponse:
        access.require_admin_token(request)  # development path: the hub's admin token only
        reg = await json_body(request, DeviceRegistration, settings.limits.max_json_bytes)
        spki = p256_spki(reg.public_key_pem)
        if reg.key_kind == "tpm":
            # the admin cannot vouch that a key lives in a TPM; only the TPM can
            raise ApiError(
                403,
                "enroll_required",
                "TPM keys are enrolled with attestation (factoryops provision enroll),"
                " not registered",
            )
        if not settings.allow_software_keys:
            raise ApiError(
                403,
                "software_key_refused",
                "this hub accepts only TPM-held keys (start it with --allow-software-keys"
                " for development)",
            )
        utid = utid_text(utid_bytes(spki))
        existing = store.device(utid)
        now = deps.now_ns()
        row = existing or store.add_device(
            utid=utid,
            public_key=spki,
            key_kind=reg.key_kind,
            certificate=deps.fleet.issue(spki, reg.key_kind, now=_utc(now)),
            name=reg.name,
            site=reg.site,
            now_ns=now,
        )
        if existing is None:
            access.audit(
                "admin",
                "device.register",
                utid,
                {"site": reg.site, "kind": reg.key_kind},
                client_ip(request),
            )
        return JSONResponse(
            {
                "utid": utid,
                "certificate_pem": der_to_pem(row.certificate),
                "fleet_ca_pem": deps.fleet.pem(),
                "log_vkey": deps.log.verifier.to_vkey(),
            },
            status_code=200 if existing else 201,
        )

    @api.get("/v1/devices")
    def list_devices(request: Request) -> dict[str, Any]:
        sites = readable_sites(deps, request)
        return {
            "devices": [
                device_json(d) for d in store.list_devices() if sites is None or d.site in sites
            ]
        }

    @api.get("/v1/devices/{utid}", operation_id="getDevice")
    def get_device(utid: Utid, request: Request) -> dict[str, Any]:
        device, _ = visible_device(deps, request, utid)
        return {**device_json(device), "storage_policy": deps.policies.get(device)}

    @api.post(
        "/v1/devices/{utid}/policy",
        openapi_extra=body_doc({"type": "string", "format": "binary"}, "application/cose"),
    )
    async def post_policy(utid: Utid, request: Request) -> dict[str, Any]:
        """A device states its storage (shedding) policy, signed with its key."""
        require_content_type(request, "application/cose")
        data = await read_body(request, MAX_POLICY_BYTES)
        device = device_or_404(store, utid, active=True)
        caller = deps.device_auth.utid_of(request.headers.get("authorization", ""))
        if device.key_kind == "tpm" and caller != device.utid:
            raise ApiError(401, "token_required", "get a device token first")
        doc = deps.policies.accept(device, data, deps.now_ns())
        return {"utid": device.utid, "storage_policy": doc}

    @api.get("/v1/devices/{utid}/head", operation_id="getDeviceHead")
    def chain_head(utid: Utid, request: Request) -> dict[str, Any]:
        """The device's own chain head, so an agent that lost its spool continues the chain
        (ADR 0027). Authenticated like an upload: a TPM device with its device token."""
        device = device_or_404(store, utid, active=True)
        caller = deps.device_auth.utid_of(request.headers.get("authorization", ""))
        if device.key_kind == "tpm" and caller != device.utid:
            raise ApiError(401, "token_required", "get a device token first")
        row = store.window_at(device.utid, device.head_window) if device.head_window >= 0 else None
        reset = None
        if row is not None:
            mp = decode_payload(decode_sign1(row.cose, require_tag=True).payload or b"")
            if mp.reset is not None:
                reset = dataclasses.asdict(mp.reset)
        return {
            "utid": device.utid,
            "window": device.head_window,
            "last_seq": device.head_last_seq,
            # what the next proof's ``prev`` must be: SHA-256 of the head's COSE bytes
            "head_hash": device.head_hash.hex() if device.head_hash is not None else None,
            "last_ts_ns": row.last_ts_ns if row is not None else None,
            "reset": reset,
        }

    @api.get("/v1/devices/{utid}/readings/{seq}/receipt", operation_id="getReceipt")
    def receipt(utid: Utid, seq: Seq, request: Request) -> JSONResponse:
        device, _ = visible_device(deps, request, utid)
        utid = device.utid
        window = store.window_for_seq(utid, seq)
        if window is None:
            raise ApiError(404, "unknown_reading", f"no accepted window holds seq {seq}")
        # Rebuilt from the stored leaves on every request: an edit to a stored byte must
        # show up as a receipt that fails verification.
        try:
            leaves = store.leaves_of_window(utid, window.window)
        except LeavesMissing as err:  # the database lists bytes its leaves file lacks
            raise HubFault(
                500, "corrupt_store", f"leaves of window {window.window}: {err}"
            ) from err
        index = seq - window.first_seq
        if not 0 <= index < len(leaves):
            raise ApiError(404, "unknown_reading", f"seq {seq} is not stored")
        try:
            rc = receipt_from_leaves(leaves, index, window.cose, certificates=(device.certificate,))
        except MalformedInput as err:
            raise HubFault(500, "corrupt_store", f"stored leaf of seq {seq}: {err}") from err
        logged = deps.log.receipt(utid, window.window)
        if logged is not None:
            rc = dataclasses.replace(rc, log_receipt=logged[0], checkpoint=logged[1])
        return JSONResponse(rc.to_json())

    @api.post("/v1/devices/{utid}/revoke", operation_id="revokeDevice")
    def revoke_device(utid: Utid, request: Request) -> dict[str, Any]:
        """Site operator: refuse this device's proofs and tokens (what it sent is kept)."""
        device, who = visible_device(deps, request, utid, "operator")
        assert who is not None  # an operator role was asked for: there is a principal
        revoke(store, utid)
        access.audit(who.name, "device.revoke", utid, {"site": device.site}, client_ip(request))
        return {"utid": utid, "revoked": True}

    return api


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


def der_to_pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
