"""The playbook: an append-only, versioned history of capsule policy changes in its own
RFC 9162 transparency log (ADR 0026).

Each entry records who changed which capsule, why, the unified diff against the policy it
replaces and the full capsule.toml now in force. Entries are canonical JSON; the log's leaf
hash is SHA-256(0x00 || entry) (``attestation.merkle``), and every append signs a C2SP
checkpoint with the hub's Ed25519 key under the playbook's own origin
(``attestation.signednote``). ``in_force`` answers "which policy held at time T", with the
inclusion proof that ties it to a signed checkpoint; ``verify_in_force`` checks that answer
offline. On open, the stored entries must rebuild the last signed root: an edited or removed
entry is refused, never repaired.
"""

from __future__ import annotations

import base64
import datetime as dt
import difflib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation import merkle
from attestation.durable import write_atomically
from attestation.errors import AttestationError
from attestation.signednote import (
    Checkpoint,
    NoteVerifier,
    format_checkpoint,
    open_note,
    parse_checkpoint,
    sign_note,
)
from capsules.errors import CapsuleError
from capsules.spec import parse_capsule

__all__ = ["Entry", "Playbook", "PlaybookProof", "leaf_hash", "utc", "verify_in_force"]

ENTRIES = "entries.jsonl"
CHECKPOINT = "checkpoint"
MAX_ENTRY_BYTES = 1 << 20  # a capsule.toml is <= 256 KiB; its diff at most twice that


class NoteSigner(Protocol):
    def public_key(self) -> ed25519.Ed25519PublicKey: ...

    def sign(self, to_be_signed: bytes) -> bytes: ...


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utc(text: str) -> str:
    """An ISO 8601 time as RFC 3339 UTC to the second, the form entries compare in."""
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise CapsuleError(f"{text!r} is not an ISO 8601 time") from err
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def leaf_hash(entry_bytes: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry_bytes).digest()  # RFC 9162 §2.1.1


@dataclass(frozen=True, slots=True)
class Entry:
    """One policy change, as logged."""

    index: int
    capsule: str
    version: str
    at: str  # RFC 3339 UTC, when the policy took force
    who: str
    why: str
    capsule_sha256: str
    replaces_sha256: str | None
    diff: str
    policy: str  # the capsule.toml in force from ``at``

    def to_bytes(self) -> bytes:
        return _canonical(
            {
                "index": self.index,
                "capsule": self.capsule,
                "version": self.version,
                "at": self.at,
                "who": self.who,
                "why": self.why,
                "capsule_sha256": self.capsule_sha256,
                "replaces_sha256": self.replaces_sha256,
                "diff": self.diff,
                "policy": self.policy,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as err:
            raise CapsuleError(f"a playbook entry does not parse: {err}") from err


@dataclass(frozen=True, slots=True)
class PlaybookProof:
    """The policy in force, its leaf index, its inclusion path and the signed checkpoint."""

    entry: Entry
    path: tuple[bytes, ...]
    checkpoint: str  # the signed note

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": json.loads(self.entry.to_bytes()),
            "path": [base64.b64encode(h).decode() for h in self.path],
            "checkpoint": self.checkpoint,
        }


@dataclass
class Playbook:
    """The log in ``folder`` (entries.jsonl + the last signed checkpoint)."""

    folder: Path
    origin: str
    entries: list[Entry]
    hashes: list[bytes]

    @classmethod
    def open(cls, folder: Path, origin: str, verifier: NoteVerifier) -> Playbook:
        """Load and check: the entries must rebuild the root of the last signed checkpoint."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ENTRIES
        raw = path.read_bytes().splitlines() if path.exists() else []
        entries = [Entry.from_bytes(line) for line in raw]
        hashes = [leaf_hash(line) for line in raw]
        for i, e in enumerate(entries):
            if e.index != i:
                raise CapsuleError(f"{path}: entry {i} says it is entry {e.index}")
        book = cls(folder, origin, entries, hashes)
        note_path = folder / CHECKPOINT
        if note_path.exists():
            try:
                cp = parse_checkpoint(open_note(note_path.read_text(encoding="utf-8"), [verifier]))
            except AttestationError as err:
                raise CapsuleError(f"{note_path}: {err}") from err
            if cp.origin != origin or cp.size > len(hashes):
                raise CapsuleError(f"{note_path}: checkpoint is not of these {len(hashes)} entries")
            if merkle.root(hashes[: cp.size]) != cp.root:
                raise CapsuleError(
                    f"{path}: the entries do not rebuild the signed root of size {cp.size}",
                    hint="an entry was edited or removed; restore the playbook from a copy",
                )
        elif entries:
            raise CapsuleError(f"{path}: entries without a signed checkpoint")
        return book

    def current(self, capsule: str) -> Entry | None:
        return next((e for e in reversed(self.entries) if e.capsule == capsule), None)

    def record(
        self, policy: bytes, *, who: str, why: str, at: str, signer: NoteSigner
    ) -> tuple[Entry, str]:
        """Append a change (a valid capsule, different from the one in force); sign the new
        checkpoint. Returns the entry and the signed note."""
        if not who.strip() or not why.strip():
            raise CapsuleError("a policy change names who made it and why", hint="--who, --why")
        at = utc(at)
        cap = parse_capsule(policy, "<playbook>")
        before = self.current(cap.name)
        if before is not None and before.capsule_sha256 == cap.digest:
            raise CapsuleError(f"{cap.name} {cap.version} is already the policy in force")
        if before is not None and at < before.at:
            raise CapsuleError(f"at {at} is before the policy in force ({before.at})")
        text = policy.decode("utf-8")
        diff = "".join(
            difflib.unified_diff(
                (before.policy if before else "").splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"{cap.name}/{before.version if before else 'none'}",
                f"{cap.name}/{cap.version}",
            )
        )
        entry = Entry(
            index=len(self.entries),
            capsule=cap.name,
            version=cap.version,
            at=at,
            who=who.strip(),
            why=why.strip(),
            capsule_sha256=cap.digest,
            replaces_sha256=before.capsule_sha256 if before else None,
            diff=diff,
            policy=text,
        )
        data = entry.to_bytes()
        if len(data) > MAX_ENTRY_BYTES:
            raise CapsuleError(f"entry of {len(data)} bytes is over {MAX_ENTRY_BYTES}")
        hashes = [*self.hashes, leaf_hash(data)]
        cp = Checkpoint(self.origin, len(hashes), merkle.root(hashes))
        note = sign_note(format_checkpoint(cp), self.origin, signer.public_key(), signer.sign)
        # append the entry durably first: a crash before the checkpoint leaves an entry
        # beyond the signed size, which the next open accepts and the next append covers
        with (self.folder / ENTRIES).open("ab") as fh:
            fh.write(data + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        write_atomically(self.folder / CHECKPOINT, note.encode())
        self.entries.append(entry)
        self.hashes = hashes
        return entry, note

    def in_force(self, capsule: str, at: str) -> PlaybookProof:
        """The policy of ``capsule`` in force at ``at`` and its proof against the checkpoint."""
        at = utc(at)
        found = [e for e in self.entries if e.capsule == capsule and e.at <= at]
        if not found:
            raise CapsuleError(f"no policy of {capsule} was in force at {at}")
        e = found[-1]
        note = (self.folder / CHECKPOINT).read_text(encoding="utf-8")
        size = parse_checkpoint(note.split("\n\n")[0] + "\n").size
        path = merkle.inclusion_path(self.hashes[:size], e.index)
        return PlaybookProof(e, tuple(path), note)

    def history(self, capsule: str | None = None) -> Sequence[Entry]:
        return [e for e in self.entries if capsule is None or e.capsule == capsule]


def verify_in_force(proof: PlaybookProof, verifier: NoteVerifier) -> Entry:
    """(1) the checkpoint's signature, (2) the entry's inclusion under its root, (3) the
    policy text is the one the entry's digest names. Raises ``CapsuleError`` naming the link."""
    try:
        cp = parse_checkpoint(open_note(proof.checkpoint, [verifier]))  # (1)
        merkle.verify_inclusion(  # (2)
            leaf_hash(proof.entry.to_bytes()), proof.entry.index, cp.size, proof.path, cp.root
        )
    except AttestationError as err:
        raise CapsuleError(f"playbook proof: {err}") from err
    got = hashlib.sha256(proof.entry.policy.encode()).hexdigest()  # (3)
    if got != proof.entry.capsule_sha256:
        raise CapsuleError("playbook proof: the policy text does not match its digest")
    return proof.entry
