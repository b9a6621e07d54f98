"""The hub side of TPM enrollment and device authentication (docs/enrollment.md).

Enrollment, two round trips (TCG / Keylime style):

``POST /v1/enroll/start`` (a one-time enrollment token + the EK certificate, EK, AK and
signing-key public areas). The hub checks the EK certificate against the TPM makers' CAs
it trusts (PEM files in ``<data_dir>/ek-ca/``), checks the key attributes, and answers a
credential wrapped to that EK and bound to the AK's name (TPM2_MakeCredential done in
software) plus a fresh nonce.

``POST /v1/enroll/finish`` (the activated secret, TPM2_Certify of the signing key by the
AK, a PCR quote, both over the nonce). Only the TPM holding that EK can activate the
secret, and it does so only for an AK it holds, so the AK — and through Certify the
signing key — are proven to live in that TPM. The hub then issues the device certificate
(fleet CA, key kind ``tpm``), burns the token and records the quoted PCRs.

Device authentication: ``/v1/devices/{utid}/challenge`` then ``/token`` with the
challenge signed by the device key gives a short-lived bearer token. Challenges are single
use; TPM-enrolled devices must present a token with their uploads.

TPM structures are parsed and MakeCredential is computed with tpm2-pytss (the ``tpm``
extra); a hub without it answers 501 on these routes and keeps working otherwise.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, insert, select, update

from attestation.device_auth import AUTH_CONTEXT, auth_message
from attestation.utid import utid_bytes, utid_text
from cloud_sync.access import Access
from cloud_sync.errors import ApiError
from cloud_sync.fleet_ca import FleetCA
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
from cloud_sync.storage.tables import (
    device_challenges,
    device_tokens,
    enrollment_tokens,
    enrollments,
)

__all__ = [
    "AUTH_CONTEXT",
    "DeviceAuth",
    "EnrollmentPolicy",
    "auth_message",
    "enroll_router",
    "load_ek_cas",
    "new_enrollment_token",
]

ENROLL_SESSION_NS = 300 * 10**9  # a started enrollment must finish within 5 minutes
CHALLENGE_NS = 60 * 10**9
TOKEN_NS = 15 * 60 * 10**9
_B64_MAX = 8192  # an EK certificate is ~1 kB; TPM public areas a few hundred bytes

Clock = Callable[[], int]


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def load_ek_cas(directory: Path) -> list[x509.Certificate]:
    """Every certificate in the PEM files of ``directory`` (missing folder: none)."""
    out: list[x509.Certificate] = []
    for path in sorted(directory.glob("*.pem")) if directory.is_dir() else []:
        out.extend(x509.load_pem_x509_certificates(path.read_bytes()))
    return out


def new_enrollment_token(store: Store, *, site: str, ttl_s: int, now_ns: int) -> str:
    """A one-time enrollment token for a field technician (only its hash is stored)."""
    token = "fo-enroll-" + secrets.token_urlsafe(24)
    with store.engine.begin() as conn:
        conn.execute(
            insert(enrollment_tokens).values(
                token_sha256=_sha(token.encode()),
                site=site,
                created_ns=now_ns,
                expires_ns=now_ns + ttl_s * 10**9,
            )
        )
    return token


# --- request bodies ------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollStart(_Body):
    token: str = Field(min_length=8, max_length=128)
    name: str = Field(min_length=1, max_length=128, pattern=r"^[\w .:@-]+$")
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


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise ApiError(422, "invalid_request", f"{field} is not base64") from err


def _tpm() -> Any:
    try:
        import tpm2_pytss.types as tpm_types  # noqa: PLC0415 - optional extra
        import tpm2_pytss.utils as tpm_utils  # noqa: PLC0415
        from tpm2_pytss import constants  # noqa: PLC0415
    except ImportError as err:
        raise ApiError(
            501, "enrollment_unavailable", "this hub was installed without the tpm extra"
        ) from err
    return tpm_types, tpm_utils, constants


# --- the checks, pure functions of their inputs ----------------------------------------------
@dataclass(frozen=True, slots=True)
class EnrollmentPolicy:
    """What the hub requires of a TPM: trusted EK CAs and, optionally, exact PCR values."""

    ek_cas: tuple[x509.Certificate, ...]
    pcrs: dict[int, bytes]  # index -> required SHA-256 value; empty: record, don't require

    @classmethod
    def load(cls, data_dir: Path) -> EnrollmentPolicy:
        pcr_file = data_dir / "pcr-policy.json"
        pcrs: dict[int, bytes] = {}
        if pcr_file.exists():
            raw = json.loads(pcr_file.read_text())
            pcrs = {int(k): bytes.fromhex(v) for k, v in raw.items()}
        return cls(tuple(load_ek_cas(data_dir / "ek-ca")), pcrs)


def _unmarshal(kind: Any, data: bytes, field: str) -> Any:
    try:
        obj, used = kind.unmarshal(data)
    except Exception as err:  # tpm2-pytss raises several types for bad bytes
        raise ApiError(422, "invalid_request", f"{field}: not a TPM structure") from err
    if used != len(data):
        raise ApiError(422, "invalid_request", f"{field}: {len(data) - used} trailing bytes")
    return obj


def _spki(public: Any) -> bytes:
    der: bytes = public.publicArea.to_der()
    return der


def check_ek(cert_der: bytes, ek_public: Any, policy: EnrollmentPolicy, now: dt.datetime) -> bytes:
    """The EK certificate chains to a trusted TPM maker and certifies this EK; its SPKI."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as err:
        raise ApiError(422, "invalid_request", "ek_cert is not a DER certificate") from err
    if not policy.ek_cas:
        raise ApiError(
            403, "untrusted_ek", "this hub trusts no TPM maker yet: put its CA in <data>/ek-ca/"
        )
    for ca in policy.ek_cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        break
    else:
        raise ApiError(403, "untrusted_ek", f"EK certificate issuer {cert.issuer.rfc4514_string()}")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ApiError(403, "untrusted_ek", "EK certificate is outside its validity period")
    spki = _spki(ek_public)
    cert_spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if spki != cert_spki:
        raise ApiError(403, "ek_mismatch", "ek_public is not the key in the EK certificate")
    return spki


def _check_attrs(public: Any, field: str, *, restricted: bool) -> None:
    _, _, c = _tpm()
    attrs = int(public.publicArea.objectAttributes)
    need = int(
        c.TPMA_OBJECT.FIXEDTPM
        | c.TPMA_OBJECT.FIXEDPARENT
        | c.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | c.TPMA_OBJECT.SIGN_ENCRYPT
    )
    if attrs & need != need:
        raise ApiError(
            422, "bad_key", f"{field}: must be fixedTPM, fixedParent, TPM-generated, sign"
        )
    if bool(attrs & int(c.TPMA_OBJECT.RESTRICTED)) != restricted or attrs & int(
        c.TPMA_OBJECT.DECRYPT
    ):
        kind = "a restricted signing key" if restricted else "an unrestricted signing key"
        raise ApiError(422, "bad_key", f"{field}: must be {kind}")
    area = public.publicArea
    if area.type != c.TPM2_ALG.ECC or area.parameters.eccDetail.curveID != c.TPM2_ECC.NIST_P256:
        raise ApiError(422, "bad_key", f"{field}: must be ECC P-256")


def check_attest(
    attest: bytes, signature: bytes, ak: Any, nonce: bytes, kind: str, field: str
) -> Any:
    """A TPMS_ATTEST the AK signed over ``nonce``; ``kind`` is 'certify' or 'quote'."""
    types, _, c = _tpm()
    sig = _unmarshal(types.TPMT_SIGNATURE, signature, f"{field}.signature")
    try:
        sig.verify_signature(ak, attest)
    except (InvalidSignature, ValueError) as err:
        raise ApiError(401, "bad_attestation", f"{field}: not signed by the AK") from err
    body = _unmarshal(types.TPMS_ATTEST, attest, f"{field}.attest")
    want = c.TPM2_ST.ATTEST_CERTIFY if kind == "certify" else c.TPM2_ST.ATTEST_QUOTE
    if body.magic != c.TPM2_GENERATED.VALUE or body.type != want:
        raise ApiError(401, "bad_attestation", f"{field}: not a TPM-generated {kind}")
    if not hmac.compare_digest(bytes(body.extraData), nonce):
        raise ApiError(401, "wrong_nonce", f"{field}: made for another nonce (replayed?)")
    return body


def check_quote(body: Any, pcrs: dict[str, str], policy: EnrollmentPolicy) -> dict[int, bytes]:
    """The reported PCR values hash to the quoted digest and meet the PCR policy."""
    try:
        values = {
            int(k): bytes.fromhex(v) for k, v in sorted(pcrs.items(), key=lambda kv: int(kv[0]))
        }
    except ValueError as err:
        raise ApiError(422, "invalid_request", "quote.pcrs: index -> hex digest") from err
    selected = []
    for sel in body.attested.quote.pcrSelect.pcrSelections[: body.attested.quote.pcrSelect.count]:
        bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
        selected += [i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1]
    if sorted(values) != selected:
        raise ApiError(401, "bad_attestation", f"quote.pcrs: the quote covers PCRs {selected}")
    digest = hashlib.sha256(b"".join(values[i] for i in selected)).digest()
    if not hmac.compare_digest(digest, bytes(body.attested.quote.pcrDigest)):
        raise ApiError(401, "bad_attestation", "quote.pcrs: values do not match the quote")
    for i, want in policy.pcrs.items():
        if values.get(i) != want:
            raise ApiError(403, "pcr_policy", f"PCR {i} is not the value the hub's policy requires")
    return values


# --- device tokens ---------------------------------------------------------------------------
@dataclass
class DeviceAuth:
    """Challenges and short-lived bearer tokens for devices (hashes only in the DB)."""

    store: Store
    now_ns: Clock

    def challenge(self, utid: str) -> bytes:
        challenge = secrets.token_bytes(32)
        now = self.now_ns()
        with self.store.engine.begin() as conn:
            conn.execute(delete(device_challenges).where(device_challenges.c.expires_ns < now))
            conn.execute(
                insert(device_challenges).values(
                    challenge_sha256=_sha(challenge),
                    utid=utid,
                    expires_ns=now + CHALLENGE_NS,
                    used=False,
                )
            )
        return challenge

    def token(self, utid: str, public_key_der: bytes, challenge: bytes, sig: bytes) -> str:
        key = serialization.load_der_public_key(public_key_der)
        if not isinstance(key, ec.EllipticCurvePublicKey) or len(sig) != 64:
            raise ApiError(401, "bad_signature", "signature must be ES256 r||s (64 bytes)")
        der = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
        try:
            key.verify(der, auth_message(utid, challenge), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as err:
            raise ApiError(401, "bad_signature", "challenge not signed by the device key") from err
        now = self.now_ns()
        with self.store.engine.begin() as conn:
            used = conn.execute(  # compare-and-set: a challenge buys one token, once
                update(device_challenges)
                .where(
                    device_challenges.c.challenge_sha256 == _sha(challenge),
                    device_challenges.c.utid == utid,
                    device_challenges.c.used.is_(False),
                    device_challenges.c.expires_ns >= now,
                )
                .values(used=True)
            )
            if used.rowcount != 1:
                raise ApiError(
                    401, "challenge_invalid", "unknown, expired or already used challenge"
                )
            token = "fo-dev-" + secrets.token_urlsafe(32)
            conn.execute(delete(device_tokens).where(device_tokens.c.expires_ns < now))
            conn.execute(
                insert(device_tokens).values(
                    token_sha256=_sha(token.encode()), utid=utid, expires_ns=now + TOKEN_NS
                )
            )
        return token

    def utid_of(self, authorization: str) -> str | None:
        """The device a ``Bearer`` token stands for; None without a device token."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith("fo-dev-"):
            return None
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(device_tokens.c.utid, device_tokens.c.expires_ns).where(
                    device_tokens.c.token_sha256 == _sha(token.encode())
                )
            ).first()
        if row is None:
            raise ApiError(401, "token_invalid", "unknown device token: get a new one")
        if row.expires_ns < self.now_ns():
            raise ApiError(401, "token_expired", "device token expired: get a new one")
        return str(row.utid)


# --- routes ----------------------------------------------------------------------------------
async def _json_body(request: Request, model: type[_Body], limit: int) -> Any:
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "too_large", f"body of {len(body)} bytes, limit {limit}")
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise ApiError(422, "invalid_request", f"{where}: {first['msg']}") from err


class TokenOrder(_Body):
    site: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[\w .:@-]+$")
    ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)


def revoke(store: Store, utid: str) -> None:
    """Revoke a device and drop its tokens (its stored proofs stay)."""
    store.set_revoked(utid, True)
    with store.engine.begin() as conn:
        conn.execute(delete(device_tokens).where(device_tokens.c.utid == utid))


def enroll_router(
    settings: HubSettings,
    store: Store,
    fleet: FleetCA,
    auth: DeviceAuth,
    now_ns: Clock,
    access: Access,
    log_vkey: str,
) -> APIRouter:
    router = APIRouter()
    limit = settings.limits.max_json_bytes

    def _active_device(utid: str) -> Any:
        device = store.device(utid)
        if device is None:
            raise ApiError(404, "unknown_device", f"no device {utid}")
        if device.revoked:
            raise ApiError(403, "revoked_device", f"device {utid} is revoked")
        return device

    @router.post("/v1/enrollment-tokens", status_code=201)
    async def create_enrollment_token(request: Request) -> dict[str, Any]:
        """Site admin: a one-time token a field technician passes to `provision enroll`."""
        order: TokenOrder = await _json_body(request, TokenOrder, limit)
        who = access.require(request, order.site, "admin")
        token = new_enrollment_token(store, site=order.site, ttl_s=order.ttl_s, now_ns=now_ns())
        access.audit(who.name, "enrollment_token.create", order.site, {"ttl_s": order.ttl_s})
        return {"token": token, "site": order.site, "expires_in": order.ttl_s}

    @router.post("/v1/devices/{utid}/revoke")
    def revoke_device(utid: str, request: Request) -> dict[str, Any]:
        """Site operator: refuse this device's proofs and tokens (what it sent is kept)."""
        device = store.device(utid)
        if device is None:
            raise ApiError(404, "unknown_device", f"no device {utid}")
        who = access.require(request, device.site, "operator")
        access.check_csrf(who, request.headers.get("x-csrf-token"))
        revoke(store, utid)
        access.audit(who.name, "device.revoke", utid, {"site": device.site})
        return {"utid": utid, "revoked": True}

    def token_row(token: str, now: int) -> Any:
        with store.engine.connect() as conn:
            row = conn.execute(
                select(enrollment_tokens).where(
                    enrollment_tokens.c.token_sha256 == _sha(token.encode())
                )
            ).first()
        if row is None:
            raise ApiError(401, "token_unknown", "no such enrollment token: ask for a new one")
        if row.used_ns is not None:
            raise ApiError(401, "token_used", "this enrollment token was already used")
        if row.expires_ns < now:
            raise ApiError(401, "token_expired", "this enrollment token expired: ask for a new one")
        return row

    @router.post("/v1/enroll/start")
    async def enroll_start(request: Request) -> dict[str, Any]:
        req: EnrollStart = await _json_body(request, EnrollStart, limit)
        types, utils, _ = _tpm()
        now = now_ns()
        token_row(req.token, now)
        policy = EnrollmentPolicy.load(settings.data_dir)
        ek = _unmarshal(types.TPM2B_PUBLIC, _b64(req.ek_public, "ek_public"), "ek_public")
        ak_bytes, key_bytes = _b64(req.ak_public, "ak_public"), _b64(req.key_public, "key_public")
        ak = _unmarshal(types.TPM2B_PUBLIC, ak_bytes, "ak_public")
        key = _unmarshal(types.TPM2B_PUBLIC, key_bytes, "key_public")
        ek_spki = check_ek(_b64(req.ek_cert, "ek_cert"), ek, policy, _utc(now))
        _check_attrs(ak, "ak_public", restricted=True)
        _check_attrs(key, "key_public", restricted=False)
        secret, nonce = secrets.token_bytes(32), secrets.token_bytes(32)
        blob, enc_secret = utils.make_credential(ek, secret, ak.get_name())
        session = secrets.token_urlsafe(24)
        with store.engine.begin() as conn:
            conn.execute(delete(enrollments).where(enrollments.c.expires_ns < now))
            conn.execute(
                insert(enrollments).values(
                    session=session,
                    token_sha256=_sha(req.token.encode()),
                    name=req.name,
                    ek_sha256=_sha(ek_spki),
                    ak_public=ak_bytes,
                    key_public=key_bytes,
                    secret_sha256=_sha(secret),
                    nonce=nonce,
                    expires_ns=now + ENROLL_SESSION_NS,
                    state="pending",
                )
            )
        enc = base64.b64encode
        return {
            "session": session,
            "credential_blob": enc(blob.marshal()).decode(),
            "encrypted_secret": enc(enc_secret.marshal()).decode(),
            "nonce": enc(nonce).decode(),
            "expires_in": ENROLL_SESSION_NS // 10**9,
        }

    @router.post("/v1/enroll/finish")
    async def enroll_finish(request: Request) -> dict[str, Any]:
        req: EnrollFinish = await _json_body(request, EnrollFinish, limit)
        types, _, _ = _tpm()
        now = now_ns()
        with store.engine.connect() as conn:
            row = conn.execute(
                select(enrollments).where(enrollments.c.session == req.session)
            ).first()
        if row is None or row.expires_ns < now or row.state != "pending":
            raise ApiError(
                401, "session_invalid", "unknown, expired or finished enrollment session"
            )
        tok = row.token_sha256
        if not hmac.compare_digest(_sha(_b64(req.secret, "secret")), row.secret_sha256):
            raise ApiError(
                401, "activation_failed", "the credential was not activated by that EK's TPM"
            )
        ak = _unmarshal(types.TPM2B_PUBLIC, row.ak_public, "ak_public")
        key = _unmarshal(types.TPM2B_PUBLIC, row.key_public, "key_public")
        certified = check_attest(
            _b64(req.certify.attest, "certify.attest"),
            _b64(req.certify.signature, "certify.signature"),
            ak,
            row.nonce,
            "certify",
            "certify",
        )
        if bytes(certified.attested.certify.name) != bytes(key.get_name()):
            raise ApiError(401, "bad_attestation", "certify: the AK certified another key")
        quoted = check_attest(
            _b64(req.quote.attest, "quote.attest"),
            _b64(req.quote.signature, "quote.signature"),
            ak,
            row.nonce,
            "quote",
            "quote",
        )
        pcrs = check_quote(quoted, req.quote.pcrs, EnrollmentPolicy.load(settings.data_dir))
        spki = _spki(key)
        utid = utid_text(utid_bytes(spki))
        existing = store.device(utid)
        if existing is not None and existing.revoked:
            raise ApiError(403, "revoked_device", "this key was revoked: make a new device key")
        with store.engine.begin() as conn:
            burnt = conn.execute(
                update(enrollment_tokens)
                .where(
                    enrollment_tokens.c.token_sha256 == tok,
                    enrollment_tokens.c.used_ns.is_(None),
                )
                .values(used_ns=now, used_by=utid)
            )
            if burnt.rowcount != 1:
                raise ApiError(401, "token_used", "this enrollment token was already used")
            conn.execute(
                update(enrollments)
                .where(enrollments.c.session == req.session)
                .values(
                    state="done", utid=utid, pcrs=json.dumps({i: v.hex() for i, v in pcrs.items()})
                )
            )
            site = conn.execute(
                select(enrollment_tokens.c.site).where(enrollment_tokens.c.token_sha256 == tok)
            ).scalar_one()
        access.audit(f"device:{utid}", "device.enroll", utid, {"site": site, "name": row.name})
        device = existing or store.add_device(
            utid=utid,
            public_key=spki,
            key_kind="tpm",
            certificate=fleet.issue(spki, "tpm", now=_utc(now)),
            name=row.name,
            site=site,
            now_ns=now,
        )
        return {
            "utid": utid,
            "certificate_pem": _pem(device.certificate),
            "fleet_ca_pem": fleet.pem(),
            "log_vkey": log_vkey,  # the agent pins it to check the hub's checkpoints
            "pcrs": {str(i): v.hex() for i, v in pcrs.items()},
        }

    @router.post("/v1/devices/{utid}/challenge")
    def device_challenge(utid: str) -> dict[str, Any]:
        _active_device(utid)
        return {
            "challenge": base64.b64encode(auth.challenge(utid)).decode(),
            "expires_in": CHALLENGE_NS // 10**9,
        }

    @router.post("/v1/devices/{utid}/token")
    async def device_token(utid: str, request: Request) -> dict[str, Any]:
        req: TokenRequest = await _json_body(request, TokenRequest, limit)
        device = _active_device(utid)
        token = auth.token(
            utid,
            device.public_key,
            _b64(req.challenge, "challenge"),
            _b64(req.signature, "signature"),
        )
        return {"token": token, "expires_in": TOKEN_NS // 10**9}

    return router


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
