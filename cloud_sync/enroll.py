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

from attestation.device_auth import AUTH_CONTEXT, auth_message
from cloud_sync.errors import ApiError, HubFault
from cloud_sync.storage import Store
from cloud_sync.storage.enrollment import DeviceTokenRepo, EnrollmentRepo

__all__ = [
    "AUTH_CONTEXT",
    "DeviceAuth",
    "EnrollmentPolicy",
    "auth_message",
    "check_attest",
    "check_ek",
    "check_key_attributes",
    "check_quote",
    "load_ek_cas",
    "new_enrollment_token",
    "revoke",
    "sha256",
    "tpm_modules",
    "unmarshal",
]

ENROLL_SESSION_NS = 300 * 10**9  # a started enrollment must finish within 5 minutes
CHALLENGE_NS = 60 * 10**9
TOKEN_NS = 15 * 60 * 10**9


Clock = Callable[[], int]


def sha256(data: bytes) -> bytes:
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
    EnrollmentRepo(store.engine).add_token(
        sha256(token.encode()), site, now_ns, now_ns + ttl_s * 10**9
    )
    return token


def revoke(store: Store, utid: str) -> None:
    """Revoke a device and drop its tokens (its stored proofs stay)."""
    store.set_revoked(utid, True)
    DeviceTokenRepo(store.engine).drop_tokens(utid)


def b64_field(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise ApiError(422, "invalid_request", f"{field} is not base64") from err


def tpm_modules() -> Any:
    try:
        import tpm2_pytss.types as tpm_types  # noqa: PLC0415 - optional extra
        import tpm2_pytss.utils as tpm_utils  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
        from tpm2_pytss import constants  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    except ImportError as err:
        raise HubFault(
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


def unmarshal(kind: Any, data: bytes, field: str) -> Any:
    try:
        obj, used = kind.unmarshal(data)
    except Exception as err:  # tpm2-pytss raises several types for bad bytes
        raise ApiError(422, "invalid_request", f"{field}: not a TPM structure") from err
    if used != len(data):
        raise ApiError(422, "invalid_request", f"{field}: {len(data) - used} trailing bytes")
    return obj


def spki_of(public: Any) -> bytes:
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
    spki = spki_of(ek_public)
    cert_spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if spki != cert_spki:
        raise ApiError(403, "ek_mismatch", "ek_public is not the key in the EK certificate")
    return spki


def check_key_attributes(public: Any, field: str, *, restricted: bool) -> None:
    _, _, c = tpm_modules()
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
    types, _, c = tpm_modules()
    sig = unmarshal(types.TPMT_SIGNATURE, signature, f"{field}.signature")
    try:
        sig.verify_signature(ak, attest)
    except (InvalidSignature, ValueError) as err:
        raise ApiError(401, "bad_attestation", f"{field}: not signed by the AK") from err
    body = unmarshal(types.TPMS_ATTEST, attest, f"{field}.attest")
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

    @property
    def _repo(self) -> DeviceTokenRepo:
        return DeviceTokenRepo(self.store.engine)

    def challenge(self, utid: str) -> bytes:
        challenge = secrets.token_bytes(32)
        now = self.now_ns()
        self._repo.add_challenge(sha256(challenge), utid, now, now + CHALLENGE_NS)
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
        token = "fo-dev-" + secrets.token_urlsafe(32)
        if not self._repo.trade_challenge(
            sha256(challenge), utid, sha256(token.encode()), now, now + TOKEN_NS
        ):
            raise ApiError(401, "challenge_invalid", "unknown, expired or already used challenge")
        return token

    def utid_of(self, authorization: str) -> str | None:
        """The device a ``Bearer`` token stands for; None without a device token."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith("fo-dev-"):
            return None
        row = self._repo.token(sha256(token.encode()))
        if row is None:
            raise ApiError(401, "token_invalid", "unknown device token: get a new one")
        if row[1] < self.now_ns():
            raise ApiError(401, "token_expired", "device token expired: get a new one")
        return row[0]


def utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
