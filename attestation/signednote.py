"""C2SP signed notes (Ed25519, type 0x01) and tlog-checkpoint bodies.

A note is text ending in a newline, a blank line, then lines "— <name> base64(keyID||sig)".
Key ID = SHA-256(name || 0x0A || 0x01 || public key)[:4] (c2sp.org/signed-note).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation.errors import BrokenLink, MalformedInput


def unb64(value: object, field: str) -> bytes:
    """Strict standard base64 (RFC 4648 s.4); anything else is MalformedInput naming ``field``.

    ``base64.b64decode`` raises ``binascii.Error`` for bad padding but ``ValueError`` for
    non-ASCII text: both end up here (found by fuzz/targets.py checkpoint).
    """
    if not isinstance(value, str):
        raise MalformedInput(field, "expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise MalformedInput(field, f"not standard base64: {err}") from err


__all__ = [
    "Checkpoint",
    "NoteVerifier",
    "format_checkpoint",
    "open_note",
    "parse_checkpoint",
    "sign_note",
]

_ED25519 = 0x01
_DASH = "\u2014 "
MAX_NOTE_BYTES = 64 * 1024  # the spec asks verifiers to bound notes; 16 PQ signatures fit
MAX_SIGNATURES = 64


def _raw(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted key: name, 32-bit key ID and Ed25519 public key."""

    name: str
    key_id: int
    key: ed25519.Ed25519PublicKey

    @classmethod
    def for_key(cls, name: str, key: ed25519.Ed25519PublicKey) -> NoteVerifier:
        if not name or any(c.isspace() or c == "+" for c in name):
            raise MalformedInput("key name", f"{name!r} must be non-empty, no spaces or '+'")
        digest = hashlib.sha256(name.encode() + b"\n" + bytes([_ED25519]) + _raw(key)).digest()
        return cls(name, int.from_bytes(digest[:4], "big"), key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key ID>+<base64(type || key)>``."""
        parts = vkey.split("+", 2)  # the base64 key may itself contain "+"
        if len(parts) != 3:
            raise MalformedInput("vkey", "expected name+keyid+key")
        name, hex_id, b64 = parts
        blob = unb64(b64, "vkey")
        try:
            key_id = int(hex_id, 16)
        except ValueError as err:
            raise MalformedInput("vkey", f"key ID {hex_id!r} is not hex") from err
        if len(hex_id) != 8 or len(blob) != 33 or blob[0] != _ED25519:
            raise MalformedInput("vkey", "only Ed25519 (type 0x01) verifier keys are supported")
        v = cls.for_key(name, ed25519.Ed25519PublicKey.from_public_bytes(blob[1:]))
        if v.key_id != key_id:
            raise MalformedInput("vkey", f"key ID {hex_id} does not match the key")
        return v

    def to_vkey(self) -> str:
        blob = base64.b64encode(bytes([_ED25519]) + _raw(self.key)).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"


def sign_note(
    text: str, name: str, key: ed25519.Ed25519PublicKey, sign: Callable[[bytes], bytes]
) -> str:
    """``text`` (ending in a newline) signed by ``sign`` as key ``name``."""
    if not text.endswith("\n"):
        raise MalformedInput("note", "text must end with a newline")
    v = NoteVerifier.for_key(name, key)
    sig = v.key_id.to_bytes(4, "big") + sign(text.encode())
    return f"{text}\n{_DASH}{name} {base64.b64encode(sig).decode()}\n"


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> str:
    """The note's text, once a signature by a known key verifies; raises otherwise."""
    if len(note.encode()) > MAX_NOTE_BYTES:
        raise MalformedInput("note", f"larger than {MAX_NOTE_BYTES} bytes")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise MalformedInput("note", "control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise MalformedInput("note", "no blank line before the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = sig_block.splitlines()
    if not lines or len(lines) > MAX_SIGNATURES:
        raise MalformedInput("note", f"expected 1..{MAX_SIGNATURES} signature lines")
    known = {(v.name, v.key_id): v for v in verifiers}
    verified = False
    for i, line in enumerate(lines):
        if not line.startswith(_DASH):
            raise MalformedInput(f"note signature line {i + 1}", "must start with an em dash")
        name, _, b64 = line[len(_DASH) :].rpartition(" ")
        blob = unb64(b64, f"note signature line {i + 1}")
        if len(blob) < 5:
            raise MalformedInput(f"note signature line {i + 1}", "too short")
        v = known.get((name, int.from_bytes(blob[:4], "big")))
        if v is None:
            continue  # unknown keys are ignored (key rotation, witnesses)
        try:
            v.key.verify(blob[4:], text.encode())
        except InvalidSignature as err:
            raise BrokenLink("checkpoint", f"signature by {name} does not verify") from err
        verified = True
    if not verified:
        raise BrokenLink(
            "checkpoint",
            "no signature by a trusted key",
            hint="pin the hub's log key with --trust hub-log-key.pem",
        )
    return text


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """c2sp.org/tlog-checkpoint body: origin, tree size, root hash (+ extension lines)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def format_checkpoint(cp: Checkpoint) -> str:
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode(), *cp.extensions]
    return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4 or any(not x for x in lines[:-1]):
        raise MalformedInput("checkpoint", "expected origin, size and root on non-empty lines")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not (size_s.isascii() and size_s.isdigit()) or (size_s.startswith("0") and size_s != "0"):
        raise MalformedInput("checkpoint", f"tree size {size_s!r} is not a decimal number")
    root = unb64(root_s, "checkpoint root hash")
    if len(root) != 32:
        raise MalformedInput("checkpoint", f"root hash has {len(root)} bytes, expected 32")
    return Checkpoint(origin, int(size_s), root, tuple(lines[3:-1]))
