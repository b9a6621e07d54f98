"""The ``Signer`` port: what every device or hub key (software, TPM, PKCS#11) offers.

A signer signs COSE to-be-signed bytes and returns the signature in COSE form
(ES256: raw r||s, 64 bytes; EdDSA: 64 bytes). Adapters live beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["ALG_EDDSA", "ALG_ES256", "Signer", "TpmClock", "es256_der_to_raw"]

ALG_ES256 = -7  # RFC 9053 §2.1: ECDSA w/ SHA-256
ALG_EDDSA = -8  # RFC 9053 §2.2


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


def es256_der_to_raw(der: bytes) -> bytes:
    """ECDSA DER (what cryptography and PKCS#11 emit) to COSE's raw r||s."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
