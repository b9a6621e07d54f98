"""TUF signing keys: Ed25519, in files (PKCS#8 PEM, mode 0600, one file a key) or in a
PKCS#11 token (an HSM; SoftHSM2 in tests), where the private key never leaves the token.

Root keys are made offline by ``factoryops hub tuf init`` and stay off the hub (a threshold
of them signs a new root); the online keys (targets, snapshot, timestamp) live in the hub's
data directory so jobs can publish without a person: there a key in a token is a
``<role>.uri`` file holding its PKCS#11 URI (with ``pin-source=env:VAR`` or ``file:``, never
the PIN), beside or instead of ``<role>.pem`` (ADR 0041).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, SecretsHandler, Signature, Signer, SSlibKey

from attestation.errors import KeyFileError
from cloud_sync.updates.errors import UpdatesError

if TYPE_CHECKING:
    from attestation.signers.pkcs11 import Pkcs11Ed25519Signer

__all__ = ["HsmSigner", "load_key", "load_signer", "new_key", "new_key_file", "token_uri"]


class HsmSigner(Signer):
    """A securesystemslib ``Signer`` whose Ed25519 key is in a PKCS#11 token: python-tuf
    signs metadata through it (CKM_EDDSA inside the token) like through a key file."""

    def __init__(self, token: Pkcs11Ed25519Signer) -> None:
        self._token = token
        self._key = SSlibKey.from_crypto(token.public_key())

    @property
    def public_key(self) -> Key:
        return self._key

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._key.keyid, self._token.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: SecretsHandler | None = None
    ) -> HsmSigner:
        signer = open_token_key(priv_key_uri, create=False)
        if signer.public_key.keyid != public_key.keyid:
            raise UpdatesError(f"{priv_key_uri}: holds another key than {public_key.keyid}")
        return signer


def token_uri(base: str, label: str) -> str:
    """The URI of key ``label`` on the token ``base`` names (``base`` has no object)."""
    if ";object=" in base or not base.startswith("pkcs11:"):
        raise UpdatesError(
            f"{base!r}: give the token's URI without an object (the key labels are made here)",
            hint="e.g. pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=tuf;"
            "pin-source=env:TUF_PIN",
        )
    return f"{base};object={label}"


def open_token_key(uri: str, *, create: bool) -> HsmSigner:
    """The key at ``uri`` in its token (made there when absent and ``create``); one
    session per key and process, kept open (a hub opens its repository per request)."""
    return _token_key(uri) if not create else _open(uri, create=True)


@functools.cache
def _token_key(uri: str) -> HsmSigner:
    return _open(uri, create=False)


def _open(uri: str, *, create: bool) -> HsmSigner:
    try:
        from attestation.signers.pkcs11 import Pkcs11Ed25519Signer  # noqa: PLC0415 - the hsm extra

        return HsmSigner(Pkcs11Ed25519Signer.open(uri, create=create))
    except (ImportError, KeyFileError) as err:
        raise UpdatesError(
            f"TUF key {uri}: {err}",
            hint=getattr(err, "hint", None) or "install the hsm extra: uv sync --extra hsm",
        ) from err


def new_key(where: Path | str) -> Signer:
    """A new key: a file at a path, or generated inside a token at a ``pkcs11:`` URI."""
    if isinstance(where, str):
        return open_token_key(where, create=True)
    return new_key_file(where)


def load_key(where: Path | str) -> Signer:
    """An existing key: a PEM file, a ``pkcs11:`` URI, or a ``.uri`` file holding one."""
    if isinstance(where, Path) and where.suffix == ".uri":
        where = where.read_text(encoding="utf-8").strip()
    if isinstance(where, str):
        return open_token_key(where, create=False)
    return load_signer(where)


def new_key_file(path: Path) -> CryptoSigner:
    """Make a key, write it (refusing to overwrite one), and return its signer."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise UpdatesError(
            f"{path} exists: refusing to replace a signing key",
            hint="move it away first if you really mean to make a new one",
        ) from err
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return CryptoSigner(key)


def load_signer(path: Path) -> CryptoSigner:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise UpdatesError(
            f"{path}: cannot read a TUF signing key ({err})",
            hint="keys come from `factoryops hub tuf init`",
        ) from err
    if not isinstance(key, Ed25519PrivateKey):
        raise UpdatesError(f"{path}: not an Ed25519 key", hint="TUF keys here are Ed25519")
    return CryptoSigner(key)
