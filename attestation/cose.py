"""COSE_Sign1 (RFC 9052 §4.2) on cbor2 + cryptography, signing through our ``Signer`` port.

Why hand-written: COSE libraries sign with in-memory keys only, and our keys live in
TPMs and HSMs (docs/adr/0003). Proven against ../shared/vectors/cose and cross-checked
with python-cwt in the tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    encode_dss_signature,
)

from attestation import cborsafe
from attestation.errors import BrokenLink, MalformedInput, Noncanonical, UnsupportedAlgorithm
from attestation.signers.base import ALG_EDDSA, ALG_ES256, P256_HALF_N, Signer

__all__ = [
    "COSE_SIGN1_TAG",
    "HDR_ALG",
    "HDR_CONTENT_TYPE",
    "HDR_CWT_CLAIMS",
    "HDR_KID",
    "PublicKey",
    "Sign1",
    "decode_sign1",
    "require_canonical",
    "sign1",
    "to_be_signed",
    "verify_sign1",
]

COSE_SIGN1_TAG = 18
HDR_ALG = 1
HDR_CONTENT_TYPE = 3
HDR_KID = 4
HDR_CWT_CLAIMS = 15  # RFC 9597

MAX_SIGN1_BYTES = 64 * 1024  # a micro-proof is < 2 KiB; 64 KiB bounds hostile input
_P256_COORD = 32

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class Sign1:
    """A decoded COSE_Sign1; ``raw`` keeps the exact bytes it came from."""

    protected_bytes: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes | None
    signature: bytes
    raw: bytes
    not_deterministic: str | None = "cose"
    """The first part of ``raw`` not in deterministic CBOR ("cose", "cose.protected"), or
    None when all of it is (``decode_sign1`` sets it; ``require_canonical`` reads it)."""

    @property
    def alg(self) -> Any:
        return self.protected.get(HDR_ALG, self.unprotected.get(HDR_ALG))

    @property
    def kid(self) -> Any:
        return self.protected.get(HDR_KID, self.unprotected.get(HDR_KID))


_SIG1_HEAD = b"\x84\x6aSignature1"  # array(4), then the text "Signature1"


def to_be_signed(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """Sig_structure for COSE_Sign1 (RFC 9052 §4.4)."""
    # An empty protected map travels as a zero-length bstr (RFC 9052 §3); a sender
    # that wrote it as h'A0' still means "empty", and cose-wg's sign-pass-01 checks that.
    body_protected = b"" if protected_bytes == b"\xa0" else protected_bytes
    # framed by hand (the same bytes as cbor2.dumps of the list: 0.7 us, not 3.5 us a proof)
    return b"".join(
        (
            _SIG1_HEAD,
            cborsafe.head(2, len(body_protected)),
            body_protected,
            cborsafe.head(2, len(external_aad)),
            external_aad,
            cborsafe.head(2, len(payload)),
            payload,
        )
    )


def sign1(
    payload: bytes,
    signer: Signer,
    *,
    protected: dict[int, Any] | None = None,
    unprotected: dict[int, Any] | None = None,
    detached: bool = False,
    tagged: bool = True,
) -> bytes:
    """Sign ``payload``; the signer's alg goes into the protected header."""
    headers: dict[int, Any] = {HDR_ALG: signer.alg, **(protected or {})}
    protected_bytes = cborsafe.dumps(headers)  # deterministic: the verifier holds it to that
    signature = signer.sign(to_be_signed(protected_bytes, payload))
    body = [protected_bytes, unprotected or {}, None if detached else payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, body) if tagged else body, canonical=True)


def decode_sign1(data: bytes, *, require_tag: bool = False) -> Sign1:  # noqa: PLR0912 - one check per RFC 9052 field
    """Parse COSE_Sign1 bytes; tag 18 or untagged, any other tag is refused."""
    if len(data) > MAX_SIGN1_BYTES:
        raise MalformedInput("cose", f"{len(data)} bytes, limit {MAX_SIGN1_BYTES}")
    try:
        obj, deterministic = cborsafe.loads_checked(data)
    except cborsafe.TrailingBytes as err:
        raise Noncanonical("cose", f"{err.extra} byte(s) after the COSE_Sign1") from err
    except cbor2.CBORDecodeError as err:
        raise MalformedInput("cose", f"not CBOR: {err}") from err
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise MalformedInput("cose", f"CBOR tag {obj.tag}, expected {COSE_SIGN1_TAG}")
        obj = obj.value
    elif require_tag:
        raise MalformedInput("cose", f"untagged; expected CBOR tag {COSE_SIGN1_TAG}")
    if not isinstance(obj, list) or len(obj) != 4:
        raise MalformedInput("cose", "expected a 4-element array")
    protected_bytes, unprotected, payload, signature = obj
    if not isinstance(protected_bytes, bytes):
        raise MalformedInput("cose.protected", "expected a byte string")
    if not isinstance(unprotected, dict):
        raise MalformedInput("cose.unprotected", "expected a map")
    if payload is not None and not isinstance(payload, bytes):
        raise MalformedInput("cose.payload", "expected a byte string or nil")
    if not isinstance(signature, bytes):
        raise MalformedInput("cose.signature", "expected a byte string")
    protected: Any = {}
    not_deterministic = None if deterministic else "cose"
    if protected_bytes:
        try:
            protected, deterministic = cborsafe.loads_checked(protected_bytes)
        except cborsafe.TrailingBytes as err:
            raise Noncanonical("cose.protected", f"{err.extra} byte(s) after the map") from err
        except cbor2.CBORDecodeError as err:
            raise MalformedInput("cose.protected", f"not CBOR: {err}") from err
        if not isinstance(protected, dict):
            raise MalformedInput("cose.protected", "expected a map")
        if not deterministic:
            not_deterministic = not_deterministic or "cose.protected"
    return Sign1(
        protected_bytes, protected, unprotected, payload, signature, data, not_deterministic
    )


def require_canonical(msg: Sign1) -> None:
    """``msg`` is in the one encoding a micro-proof may have (ARCHITECTURE.md, "One
    canonical form"), else ``Noncanonical`` naming the part. Everything the signature does
    not cover is pinned, so that no one on the way can make a second valid copy: the outer
    structure (tag 18 as the byte d2, deterministic CBOR, nothing after it: ``decode_sign1``
    refuses that), an empty unprotected header, and for ES256 the low one of the two
    signatures (r, s) and (r, n - s) that verify. The protected header's content must be
    deterministic CBOR too. Whether bytes are deterministic is told by the decoder
    (``cborsafe.loads_checked``; docs/adr/0013-one-canonical-proof.md).
    """
    if msg.unprotected:
        raise Noncanonical(
            "cose.unprotected", f"{len(msg.unprotected)} header(s); it must be the empty map"
        )
    if msg.raw[:1] != b"\xd2":
        raise Noncanonical("cose", f"must open with tag {COSE_SIGN1_TAG} as the byte d2")
    if msg.not_deterministic is not None:
        raise Noncanonical(msg.not_deterministic, "not deterministic CBOR (RFC 8949 §4.2.1)")
    es256 = msg.alg == ALG_ES256 and len(msg.signature) == 2 * _P256_COORD
    if es256 and int.from_bytes(msg.signature[_P256_COORD:], "big") > P256_HALF_N:
        raise Noncanonical("cose.signature", "ES256 with a high s; the signer must write n - s")


_ES256_PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))  # stateless: one for every verify


def verify_sign1(
    msg: Sign1,
    key: PublicKey,
    *,
    external_aad: bytes = b"",
    detached_payload: bytes | None = None,
) -> None:
    """Check the signature of ``msg`` with ``key``; raises ``BrokenLink("signature")``."""
    payload = msg.payload if detached_payload is None else detached_payload
    if payload is None:
        raise MalformedInput("cose.payload", "detached, and no payload was supplied")
    tbs = to_be_signed(msg.protected_bytes, payload, external_aad)
    alg = msg.alg
    try:
        if alg == ALG_ES256:
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                raise BrokenLink("signature", "ES256 needs a P-256 key")
            if len(msg.signature) != 2 * _P256_COORD:
                raise BrokenLink(
                    "signature", f"ES256 signature has {len(msg.signature)} bytes, expected 64"
                )
            r = int.from_bytes(msg.signature[:_P256_COORD], "big")
            s = int.from_bytes(msg.signature[_P256_COORD:], "big")
            digest = hashlib.sha256(tbs).digest()
            key.verify(encode_dss_signature(r, s), digest, _ES256_PREHASHED)
        elif alg == ALG_EDDSA:
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise BrokenLink("signature", "EdDSA needs an Ed25519 key")
            key.verify(msg.signature, tbs)
        else:
            raise UnsupportedAlgorithm(
                f"COSE alg {alg!r} is not supported; only ES256 (-7) and EdDSA (-8) are",
                hint="re-sign with ES256 or EdDSA",
            )
    except InvalidSignature as err:
        raise BrokenLink("signature", "the COSE signature does not verify") from err
