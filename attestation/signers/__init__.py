"""Signers: the ``Signer`` port and its adapters (software here; tpm, pkcs11 beside it)."""

from attestation.signers.base import ALG_EDDSA, ALG_ES256, Signer, TpmClock
from attestation.signers.software import Ed25519FileSigner, SoftwareSigner

__all__ = ["ALG_EDDSA", "ALG_ES256", "Ed25519FileSigner", "Signer", "SoftwareSigner", "TpmClock"]
