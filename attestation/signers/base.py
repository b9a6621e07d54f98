"""The ``Signer`` port: what every device or hub key (software, TPM, PKCS#11) offers.

A signer signs COSE to-be-signed bytes and returns the signature in COSE form
(ES256: raw r||s, 64 bytes; EdDSA: 64 bytes). Adapters live beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation.errors import AttestationError

__all__ = [
    "ALG_EDDSA",
    "ALG_ES256",
    "P256_HALF_N",
    "Signer",
    "SignerUnavailable",
    "TpmClock",
    "es256_der_to_raw",
    "es256_raw",
]

ALG_ES256 = -7  # RFC 9053 §2.1: ECDSA w/ SHA-256
ALG_EDDSA = -8  # RFC 9053 §2.2

_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # SEC 2 §2.4.2
P256_HALF_N = _P256_N // 2
"""The largest s of a canonical ES256 signature ("low s", as in Bitcoin's BIP 146)."""


class SignerUnavailable(AttestationError):
    """The key's holder cannot be reached now (a TPM being reset, its link cut); the same
    call may succeed later. A signer raises this, never for a refusal that would repeat."""


@dataclass(frozen=True, slots=True)
class TpmClock:
    """TPMS_CLOCK_INFO read when a TPM signs (TPM 2.0 Part 2 §10.11.1)."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@runtime_checkable
class Signer(Protocol):
    """A key that signs; ``kind`` is ``software``, ``tpm`` or ``pkcs11``."""

    @property
    def alg(self) -> int: ...

    @property
    def kind(self) -> str: ...

    def public_key_der(self) -> bytes:
        """DER SubjectPublicKeyInfo of the public half."""
        ...

    def sign(self, to_be_signed: bytes) -> bytes:
        """Signature over ``to_be_signed`` in COSE form (ES256: r||s)."""
        ...

    def clock(self) -> TpmClock | None:
        """Signed-time evidence to embed in a micro-proof, or None when there is none."""
        ...


def es256_raw(r: int, s: int) -> bytes:
    """COSE's raw r||s with the low s: (r, s) and (r, n - s) both verify, and a micro-proof
    has one canonical form (ARCHITECTURE.md), so every ES256 signer writes the low one."""
    if s > P256_HALF_N:
        s = _P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def es256_der_to_raw(der: bytes) -> bytes:
    """ECDSA DER (what cryptography and PKCS#11 emit) to COSE's raw r||s, low s."""
    return es256_raw(*decode_dss_signature(der))
