"""Published capsules: a signed bundle of a capsule folder, and its verification.

A bundle is one JSON file: a manifest (name, version, area, SHA-256 and size of every file),
the files themselves (base64), and an Ed25519 signature over a domain tag plus the
manifest's canonical JSON, made today with the hub's log key (ADR 0025 says when TUF
replaces this). ``verify_bundle`` checks signature, then every digest, then the capsule.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from capsules.errors import BundleInvalid
from capsules.spec import Capsule, parse_capsule

__all__ = [
    "BUNDLE_TYPE",
    "BundleLimits",
    "Ed25519Signing",
    "make_bundle",
    "open_bundle",
    "verify_bundle",
]

BUNDLE_TYPE = "application/vnd.factoryops.capsule-bundle+json"
_DOMAIN = b"factoryops-capsule-bundle-v1\n"  # a signature for this, never for a log entry


class Ed25519Signing(Protocol):
    def sign(self, to_be_signed: bytes) -> bytes: ...

    def public_key_der(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class BundleLimits:
    max_files: int = 64  # a capsule is a toml, a README and a few templates
    max_bytes: int = 4 << 20  # all files together; the largest capsule is ~30 KiB


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts
    }


def make_bundle(cap: Capsule, folder: Path, signer: Ed25519Signing) -> bytes:
    """The signed bundle of ``folder`` (which holds ``cap``'s capsule.toml)."""
    files = _files(folder)
    manifest = {
        "name": cap.name,
        "version": cap.version,
        "area": cap.area,
        "capsule_sha256": cap.digest,
        "files": {
            k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in files.items()
        },
    }
    key_der = signer.public_key_der()
    doc = {
        "type": BUNDLE_TYPE,
        "manifest": manifest,
        "files": {k: base64.b64encode(v).decode() for k, v in files.items()},
        "key_id": hashlib.sha256(key_der).hexdigest(),
        "signature": base64.b64encode(signer.sign(_DOMAIN + _canonical(manifest))).decode(),
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _public_keys(pems: Sequence[bytes]) -> dict[str, ed25519.Ed25519PublicKey]:
    out = {}
    for pem in pems:
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise BundleInvalid("a trusted key is not an Ed25519 public key")
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out[hashlib.sha256(der).hexdigest()] = key
    return out


def _parse(
    data: bytes, limits: BundleLimits
) -> tuple[dict[str, Any], dict[str, bytes], tuple[bytes, str]]:
    """The bundle's manifest, files, signature and key ID; refuses past the limits."""
    if len(data) > 2 * limits.max_bytes:
        raise BundleInvalid(f"bundle is {len(data)} bytes, over {2 * limits.max_bytes}")
    try:
        doc = json.loads(data)
        manifest, encoded = doc["manifest"], doc["files"]
        signature = base64.b64decode(doc["signature"], validate=True)
        key_id = str(doc["key_id"])
        if doc["type"] != BUNDLE_TYPE:
            raise BundleInvalid(f"type {doc['type']!r} is not {BUNDLE_TYPE}")
        files = {str(k): base64.b64decode(v, validate=True) for k, v in encoded.items()}
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise BundleInvalid(f"not a capsule bundle: {err}") from err
    if len(files) > limits.max_files or sum(map(len, files.values())) > limits.max_bytes:
        raise BundleInvalid(f"bundle exceeds {limits.max_files} files or {limits.max_bytes} bytes")
    if not isinstance(manifest, dict):
        raise BundleInvalid("the manifest is not an object")
    return manifest, files, (signature, key_id)


def verify_bundle(
    data: bytes, trusted_pems: Sequence[bytes], limits: BundleLimits = BundleLimits()
) -> tuple[Capsule, dict[str, bytes]]:
    """(1) parse, (2) signature by a trusted key, (3) every file's digest, (4) the capsule."""
    manifest, files, (signature, key_id) = _parse(data, limits)  # (1) parse
    # (2) signature
    key = _public_keys(trusted_pems).get(key_id)
    if key is None:
        raise BundleInvalid(
            f"signed by key {key_id[:16]}..., which is not trusted",
            hint="pass the hub's hub-log-key.pem with --trust",
        )
    try:
        key.verify(signature, _DOMAIN + _canonical(manifest))
    except InvalidSignature as err:
        raise BundleInvalid("signature does not verify over the manifest") from err
    return _contents(manifest, files)


def open_bundle(
    data: bytes, limits: BundleLimits = BundleLimits()
) -> tuple[Capsule, dict[str, bytes]]:
    """Steps (1), (3) and (4) only: for a bundle whose bytes TUF has already verified
    against the hub's signed targets metadata (``capsules/tuf.py``)."""
    manifest, files, _ = _parse(data, limits)
    return _contents(manifest, files)


def _contents(
    manifest: dict[str, Any], files: dict[str, bytes]
) -> tuple[Capsule, dict[str, bytes]]:
    # (3) digests: the files present are exactly the files signed
    listed = manifest.get("files", {})
    if set(listed) != set(files):
        raise BundleInvalid(f"files differ from the manifest: {sorted(set(listed) ^ set(files))}")
    for name, blob in files.items():
        entry = listed[name]
        if not isinstance(entry, dict) or hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
            raise BundleInvalid(f"{name}: SHA-256 does not match the signed manifest")
    # (4) the capsule itself, and that it is the one the manifest names
    if "capsule.toml" not in files:
        raise BundleInvalid("the bundle holds no capsule.toml")
    cap = parse_capsule(files["capsule.toml"], f"bundle:{manifest.get('name')}/capsule.toml")
    if (cap.name, cap.version, cap.digest) != (
        manifest.get("name"),
        manifest.get("version"),
        manifest.get("capsule_sha256"),
    ):
        raise BundleInvalid("the manifest's name, version or digest differ from capsule.toml")
    return cap, files
