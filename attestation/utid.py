"""UTID: the device identity, SHA-256 of the DER SubjectPublicKeyInfo of its signing key.

Text form ``utid:`` + 64 lowercase hex digits.
"""

from __future__ import annotations

import hashlib
import re

from attestation.errors import MalformedInput

__all__ = ["UTID_PREFIX", "parse_utid", "utid_bytes", "utid_text"]

UTID_PREFIX = "utid:"
_UTID_RE = re.compile(r"utid:[0-9a-f]{64}")


def utid_bytes(spki_der: bytes) -> bytes:
    """The 32-byte UTID (the COSE ``kid``) of a public key."""
    return hashlib.sha256(spki_der).digest()


def utid_text(kid: bytes) -> str:
    if len(kid) != 32:
        raise MalformedInput("utid", f"{len(kid)} bytes, expected 32")
    return UTID_PREFIX + kid.hex()


def parse_utid(text: str) -> bytes:
    """``utid:<hex>`` back to its 32 bytes, naming what is wrong with a bad one."""
    if not _UTID_RE.fullmatch(text):
        raise MalformedInput("utid", f"{text[:80]!r} is not 'utid:' + 64 lowercase hex digits")
    return bytes.fromhex(text[len(UTID_PREFIX) :])
