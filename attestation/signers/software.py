"""Software P-256 signer for development: the key is a PEM file, mode 0600.

It is not a TPM: the hub marks its certificates as software keys and refuses them
by policy outside the demo (docs/adr/0004).
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from attestation.durable import write_new
from attestation.errors import KeyFileError
from attestation.signers.base import ALG_EDDSA, ALG_ES256, TpmClock, es256_der_to_raw

__all__ = ["Ed25519FileSigner", "SoftwareSigner", "load_private_key", "write_private_key"]


def write_private_key(path: Path, pem: bytes) -> None:
    """Create ``path`` with mode 0600 atomically; refuse to overwrite an existing key."""
    try:
        write_new(path, pem, 0o600)  # never replace a device key
    except FileExistsError as err:
        raise KeyFileError(f"{path} already exists", hint="remove it first if you mean it") from err


def load_private_key(path: Path) -> bytes:
    """Read a private key PEM, refusing one that group or others can read."""
    try:
        st = path.stat()
    except FileNotFoundError as err:
        raise KeyFileError(
            f"key file {path} does not exist", hint="create one with `factoryops provision init`"
        ) from err
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; others can read it",
            hint=f"chmod 600 {path}",
        )
    return path.read_bytes()


class SoftwareSigner:
    """ES256 with a P-256 key held in process memory (development only)."""

    kind = "software"
    alg = ALG_ES256

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if key.curve.name != "secp256r1":
            raise KeyFileError(f"key is on {key.curve.name}, expected P-256 (secp256r1)")
        self._key = key
        self._der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def generate(cls) -> SoftwareSigner:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, path: Path) -> SoftwareSigner:
        if not path.exists():
            signer = cls.generate()
            write_private_key(path, signer.private_pem())
            return signer
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> SoftwareSigner:
        key = serialization.load_pem_private_key(load_private_key(path), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyFileError(f"{path} does not hold an EC private key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_key_der(self) -> bytes:
        return self._der

    def sign(self, to_be_signed: bytes) -> bytes:
        digest = hashlib.sha256(to_be_signed).digest()
        der = self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return es256_der_to_raw(der)

    def clock(self) -> TpmClock | None:
        return None


class Ed25519FileSigner:
    """EdDSA with an Ed25519 key (the hub's log key when no HSM is configured)."""

    kind = "software"
    alg = ALG_EDDSA

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> Ed25519FileSigner:
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private_key(path, pem)
            return cls(key)
        loaded = serialization.load_pem_private_key(load_private_key(path), password=None)
        if not isinstance(loaded, ed25519.Ed25519PrivateKey):
            raise KeyFileError(f"{path} does not hold an Ed25519 private key")
        return cls(loaded)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._key.public_key()

    def public_key_der(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, to_be_signed: bytes) -> bytes:
        return self._key.sign(to_be_signed)

    def clock(self) -> TpmClock | None:
        return None
