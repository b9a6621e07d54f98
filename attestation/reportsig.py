"""The hub's detached signature on a proof report's JSON twin, and its check.

The report's facts are written as canonical JSON bytes (sorted keys, no spaces, UTF-8); the
hub signs those bytes with its log key as a COSE_Sign1 with a detached payload and its own
content type, so the signature can never be mistaken for a checkpoint or a log receipt made
with the same key. The PDF prints the SHA-256 of the same bytes, which ties the two.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation import cose
from attestation.errors import BrokenLink, MalformedInput
from attestation.signers.base import ALG_EDDSA, Signer

__all__ = ["REPORT_CONTENT_TYPE", "report_bytes", "sign_report", "verify_report"]

REPORT_CONTENT_TYPE = "application/vnd.factoryops.report+json"


def report_bytes(report: dict[str, Any]) -> bytes:
    """The one byte form of a report's facts (what is hashed and signed)."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def sign_report(data: bytes, signer: Signer) -> bytes:
    """A COSE_Sign1 over ``data`` with the payload detached (the JSON file is the payload)."""
    return cose.sign1(
        data, signer, protected={cose.HDR_CONTENT_TYPE: REPORT_CONTENT_TYPE}, detached=True
    )


def verify_report(data: bytes, signature: bytes, key: ed25519.Ed25519PublicKey) -> str:
    """Check the hub's signature on a report's bytes; the bytes' SHA-256 (hex) when valid.

    Raises ``MalformedInput`` for a signature that is not a report signature, and
    ``BrokenLink("signature")`` when it does not verify (the report was changed)."""
    msg = cose.decode_sign1(signature)
    if msg.protected.get(cose.HDR_ALG) != ALG_EDDSA:
        raise MalformedInput("report signature", "alg must be EdDSA (-8)")
    if msg.protected.get(cose.HDR_CONTENT_TYPE) != REPORT_CONTENT_TYPE:
        raise MalformedInput("report signature", f"content type must be {REPORT_CONTENT_TYPE}")
    if msg.payload is not None:
        raise MalformedInput("report signature", "the payload must be detached")
    try:
        cose.verify_sign1(msg, key, detached_payload=data)
    except BrokenLink as err:
        raise BrokenLink("signature", "the report's bytes are not what the hub signed") from err
    return hashlib.sha256(data).hexdigest()
