"""Enrolment and device authentication over HTTP: enrollment tokens for technicians, the
two TPM round trips (``/v1/enroll/start``, ``/finish``), and device challenges and tokens.
The checks themselves are in ``cloud_sync.enroll``.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from attestation.utid import utid_bytes, utid_text
from cloud_sync.access import client_ip
from cloud_sync.enroll import (
    CHALLENGE_NS,
    ENROLL_SESSION_NS,
    TOKEN_NS,
    EnrollmentPolicy,
    b64_field,
    check_attest,
    check_ek,
    check_key_attributes,
    check_quote,
    new_enrollment_token,
    sha256,
    spki_of,
    tpm_modules,
    unmarshal,
    utc,
)
from cloud_sync.errors import ApiError
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.devices import der_to_pem
from cloud_sync.routes.request import (
    SITE_PATTERN,
    Utid,
    body_doc,
    device_or_404,
    json_body,
    links_doc,
    model_schema,
)
from cloud_sync.storage.enrollment import EnrollmentRepo

__all__ = ["EnrollFinish", "EnrollStart", "TokenOrder", "TokenRequest", "router"]

_B64_MAX = 8192  # an EK certificate is ~1 kB; TPM public areas a few hundred bytes


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# a technician starts an enrollment with the new token (stateful fuzzing follows the link)
_TOKEN_LINKS = links_doc(
    201,
    {
        "EnrollStart": {
            "operationId": "enrollStart",
            "requestBody": {"token": "$response.body#/token"},
        }
    },
)


class TokenOrder(_Body):
    site: str = Field(default="default", pattern=SITE_PATTERN)
    ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)


class EnrollStart(_Body):
    token: str = Field(min_length=8, max_length=128)
    name: str = Field(pattern=SITE_PATTERN)
    ek_cert: str = Field(max_length=_B64_MAX)
    ek_public: str = Field(max_length=_B64_MAX)
    ak_public: str = Field(max_length=_B64_MAX)
    key_public: str = Field(max_length=_B64_MAX)


class SignedAttest(_Body):
    attest: str = Field(max_length=_B64_MAX)
    signature: str = Field(max_length=_B64_MAX)


class QuoteBody(SignedAttest):
    pcrs: dict[str, str] = Field(max_length=24)


class EnrollFinish(_Body):
    session: str = Field(min_length=16, max_length=64)
    secret: str = Field(max_length=256)
    certify: SignedAttest
    quote: QuoteBody


class TokenRequest(_Body):
    challenge: str = Field(max_length=256)
    signature: str = Field(max_length=256)  # ES256 r||s, base64


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()
    settings, store, access = deps.settings, deps.store, deps.access
    repo = EnrollmentRepo(store.engine)
    limit = settings.limits.max_json_bytes

    @api.post(
        "/v1/enrollment-tokens",
        status_code=201,
        openapi_extra={**body_doc(model_schema(TokenOrder)), **_TOKEN_LINKS},
    )
    async def create_enrollment_token(request: Request) -> dict[str, Any]:
        """Site admin: a one-time token a field technician passes to `provision enroll`."""
        order = await json_body(request, TokenOrder, limit)
        who = access.require(request, order.site, "admin")
        token = new_enrollment_token(
            store, site=order.site, ttl_s=order.ttl_s, now_ns=deps.now_ns()
        )
        access.audit(
            who.name,
            "enrollment_token.create",
            order.site,
            {"ttl_s": order.ttl_s},
            client_ip(request),
        )
        return {"token": token, "site": order.site, "expires_in": order.ttl_s}

    def usable_token(token: str, now: int, key_utid: str) -> None:
        """A token is usable once; after that only to finish the enrollment it made: the
        same TPM key enrolling again (a gateway interrupted after the hub committed, which
        never wrote its certificate). Finishing proves possession of that key afresh."""
        row = repo.token(sha256(token.encode()))
        if row is None:
            raise ApiError(401, "token_unknown", "no such enrollment token: ask for a new one")
        if row.used_ns is not None:
            if row.used_by == key_utid and _active(key_utid):
                return
            raise ApiError(401, "token_used", "this enrollment token was already used")
        if row.expires_ns < now:
            raise ApiError(401, "token_expired", "this enrollment token expired: ask for a new one")

    def _active(utid: str) -> bool:
        device = store.device(utid)
        return device is not None and not device.revoked

    @api.post(
        "/v1/enroll/start",
        operation_id="enrollStart",
        openapi_extra=body_doc(model_schema(EnrollStart)),
    )
    async def enroll_start(request: Request) -> dict[str, Any]:
        req = await json_body(request, EnrollStart, limit)
        types, utils, _ = tpm_modules()
        now = deps.now_ns()
        key_bytes = b64_field(req.key_public, "key_public")
        key = unmarshal(types.TPM2B_PUBLIC, key_bytes, "key_public")
        usable_token(req.token, now, utid_text(utid_bytes(spki_of(key))))
        policy = EnrollmentPolicy.load(settings.data_dir)
        ek = unmarshal(types.TPM2B_PUBLIC, b64_field(req.ek_public, "ek_public"), "ek_public")
        ak_bytes = b64_field(req.ak_public, "ak_public")
        ak = unmarshal(types.TPM2B_PUBLIC, ak_bytes, "ak_public")
        ek_spki = check_ek(b64_field(req.ek_cert, "ek_cert"), ek, policy, utc(now))
        check_key_attributes(ak, "ak_public", restricted=True)
        check_key_attributes(key, "key_public", restricted=False)
        secret, nonce = secrets.token_bytes(32), secrets.token_bytes(32)
        blob, enc_secret = utils.make_credential(ek, secret, ak.get_name())
        session = secrets.token_urlsafe(24)
        repo.start_session(
            now,
            session=session,
            token_sha256=sha256(req.token.encode()),
            name=req.name,
            ek_sha256=sha256(ek_spki),
            ak_public=ak_bytes,
            key_public=key_bytes,
            secret_sha256=sha256(secret),
            nonce=nonce,
            expires_ns=now + ENROLL_SESSION_NS,
        )
        enc = base64.b64encode
        return {
            "session": session,
            "credential_blob": enc(blob.marshal()).decode(),
            "encrypted_secret": enc(enc_secret.marshal()).decode(),
            "nonce": enc(nonce).decode(),
            "expires_in": ENROLL_SESSION_NS // 10**9,
        }

    @api.post("/v1/enroll/finish", openapi_extra=body_doc(model_schema(EnrollFinish)))
    async def enroll_finish(request: Request) -> dict[str, Any]:
        req = await json_body(request, EnrollFinish, limit)
        types, _, _ = tpm_modules()
        now = deps.now_ns()
        row = repo.session(req.session)
        if row is None or row.expires_ns < now or row.state != "pending":
            raise ApiError(
                401, "session_invalid", "unknown, expired or finished enrollment session"
            )
        if not secrets.compare_digest(sha256(b64_field(req.secret, "secret")), row.secret_sha256):
            raise ApiError(
                401, "activation_failed", "the credential was not activated by that EK's TPM"
            )
        ak = unmarshal(types.TPM2B_PUBLIC, row.ak_public, "ak_public")
        key = unmarshal(types.TPM2B_PUBLIC, row.key_public, "key_public")
        certified = check_attest(
            b64_field(req.certify.attest, "certify.attest"),
            b64_field(req.certify.signature, "certify.signature"),
            ak,
            row.nonce,
            "certify",
            "certify",
        )
        if bytes(certified.attested.certify.name) != bytes(key.get_name()):
            raise ApiError(401, "bad_attestation", "certify: the AK certified another key")
        quoted = check_attest(
            b64_field(req.quote.attest, "quote.attest"),
            b64_field(req.quote.signature, "quote.signature"),
            ak,
            row.nonce,
            "quote",
            "quote",
        )
        pcrs = check_quote(quoted, req.quote.pcrs, EnrollmentPolicy.load(settings.data_dir))
        spki = spki_of(key)
        utid = utid_text(utid_bytes(spki))
        existing = store.device(utid)
        if existing is not None and existing.revoked:
            raise ApiError(403, "revoked_device", "this key was revoked: make a new device key")
        pcrs_json = json.dumps({i: v.hex() for i, v in pcrs.items()})
        site = repo.finish(req.session, row.token_sha256, utid, pcrs_json, now)
        action = "device.enroll"
        if site is None:
            site = repo.resume(req.session, row.token_sha256, utid, pcrs_json)
            if site is None or existing is None:
                raise ApiError(401, "token_used", "this enrollment token was already used")
            action = "device.enroll.resume"  # the same key finished again: same certificate
        access.audit(
            f"device:{utid}", action, utid, {"site": site, "name": row.name}, client_ip(request)
        )
        device = existing or store.add_device(
            utid=utid,
            public_key=spki,
            key_kind="tpm",
            certificate=deps.fleet.issue(spki, "tpm", now=utc(now)),
            name=row.name,
            site=site,
            now_ns=now,
        )
        return {
            "utid": utid,
            "certificate_pem": der_to_pem(device.certificate),
            "fleet_ca_pem": deps.fleet.pem(),
            "log_vkey": deps.log.verifier.to_vkey(),  # the agent pins it to check checkpoints
            "pcrs": {str(i): v.hex() for i, v in pcrs.items()},
        }

    @api.post("/v1/devices/{utid}/challenge", operation_id="deviceChallenge")
    def device_challenge(utid: Utid) -> dict[str, Any]:
        device_or_404(store, utid, active=True)
        return {
            "challenge": base64.b64encode(deps.device_auth.challenge(utid)).decode(),
            "expires_in": CHALLENGE_NS // 10**9,
        }

    @api.post("/v1/devices/{utid}/token", openapi_extra=body_doc(model_schema(TokenRequest)))
    async def device_token(utid: Utid, request: Request) -> dict[str, Any]:
        req = await json_body(request, TokenRequest, limit)
        device = device_or_404(store, utid, active=True)
        token = deps.device_auth.token(
            utid,
            device.public_key,
            b64_field(req.challenge, "challenge"),
            b64_field(req.signature, "signature"),
        )
        return {"token": token, "expires_in": TOKEN_NS // 10**9}

    return api
