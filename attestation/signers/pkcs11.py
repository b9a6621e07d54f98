"""An Ed25519 key in a PKCS#11 token (an HSM; SoftHSM2 in tests): the hub's log key.

The key is addressed by a PKCS#11 URI in the style of RFC 7512, e.g.
``pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=hub;object=hub-log;pin-source=env:HSM_PIN``.
``pin-source`` is ``env:VAR`` or ``file:/path``; ``pin-value`` is accepted for tests only.
The private key never leaves the token: signing is CKM_EDDSA inside it. One session is
kept open and used behind a lock (PKCS#11 sessions are not thread-safe).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation.errors import KeyFileError
from attestation.signers.base import ALG_EDDSA, TpmClock

__all__ = ["Pkcs11Ed25519Signer", "parse_pkcs11_uri"]

_ED25519_OID = "1.3.101.112"
_REQUIRED = ("module-path", "token", "object")
_URI_HINT = (
    "e.g. pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=hub;object=hub-log;"
    "pin-source=env:HSM_PIN"
)


def parse_pkcs11_uri(uri: str) -> dict[str, str]:
    """``pkcs11:k=v;k=v`` -> {k: v}; names what is missing."""
    scheme, sep, rest = uri.partition(":")
    if scheme != "pkcs11" or not sep:
        raise KeyFileError(f"{uri}: a PKCS#11 key URI starts with 'pkcs11:'", hint=_URI_HINT)
    attrs = {}
    for part in filter(None, rest.split(";")):
        k, eq, v = part.partition("=")
        if not eq:
            raise KeyFileError(f"{uri}: {part!r} is not key=value", hint=_URI_HINT)
        attrs[k.strip()] = v.strip()
    missing = [k for k in _REQUIRED if k not in attrs]
    if missing:
        raise KeyFileError(f"{uri}: missing {', '.join(missing)}", hint=_URI_HINT)
    return attrs


def _pin(attrs: dict[str, str], uri: str) -> str:
    if "pin-value" in attrs:
        return attrs["pin-value"]
    source = attrs.get("pin-source", "")
    kind, _, where = source.partition(":")
    if kind == "env" and where in os.environ:
        return os.environ[where]
    if kind == "file":
        return Path(where).read_text().strip()
    raise KeyFileError(f"{uri}: no PIN", hint="add pin-source=env:VAR or pin-source=file:/path")


@dataclass
class Pkcs11Ed25519Signer:
    _session: Any
    _private: Any
    _public: ed25519.Ed25519PublicKey
    _mechanism: Any  # pkcs11.Mechanism.EDDSA (imported only with the hsm extra)
    label: str
    kind = "pkcs11"
    alg = ALG_EDDSA

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def open(cls, uri: str, *, create: bool = True) -> Pkcs11Ed25519Signer:
        """Find the key ``object`` on ``token``; generate it inside the token if absent."""
        import pkcs11  # noqa: PLC0415 - the hsm extra
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
        from pkcs11.util.ec import encode_named_curve_parameters  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        attrs = parse_pkcs11_uri(uri)
        try:
            lib = pkcs11.lib(attrs["module-path"])
            token = lib.get_token(token_label=attrs["token"])
            try:
                session = token.open(rw=True, user_pin=_pin(attrs, uri))
            except pkcs11.UserAlreadyLoggedIn:
                # login is per process in PKCS#11: a second session (a hub restarted in the
                # same process) shares the login of the first
                session = token.open(rw=True)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as err:
            raise KeyFileError(
                f"cannot open PKCS#11 token {attrs['token']!r}: {type(err).__name__} {err}",
                hint="check module-path, the token label (softhsm2-util --show-slots) and the PIN",
            ) from err
        label = attrs["object"]
        try:
            private = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label=label)
            public = session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC_EDWARDS, label=label)
        except pkcs11.NoSuchKey:
            if not create:
                session.close()
                raise KeyFileError(
                    f"no Ed25519 key labelled {label!r} on token {attrs['token']!r}",
                    hint="start the hub once with create allowed, or import the key",
                ) from None
            params = session.create_domain_parameters(
                KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)},
                local=True,
            )
            public, private = params.generate_keypair(store=True, label=label)
        point = bytes(public[Attribute.EC_POINT])
        raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
        key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        return cls(session, private, key, Mechanism.EDDSA, label)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    def public_key_der(self) -> bytes:
        return self._public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, to_be_signed: bytes) -> bytes:
        with self._lock:
            sig: bytes = self._private.sign(to_be_signed, mechanism=self._mechanism)
        return sig

    def clock(self) -> TpmClock | None:
        return None

    def close(self) -> None:
        with self._lock:
            self._session.close()
