"""The hub's append-only RFC 9162 transparency log over accepted micro-proofs.

Entries are appended inside the transaction that stores each proof; checkpoints are C2SP
signed notes and receipts are COSE receipts, both with the hub's Ed25519 log key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from attestation import merkle
from attestation.logreceipt import build_log_receipt, entry_hash
from attestation.signednote import Checkpoint, NoteVerifier, format_checkpoint, sign_note
from attestation.signers.pkcs11 import Pkcs11Ed25519Signer
from attestation.signers.software import Ed25519FileSigner
from cloud_sync.errors import ApiError
from cloud_sync.storage import Store, Transaction
from cloud_sync.storage.log import LogRepo, StoredCheckpoint

__all__ = ["HubLog"]

_log = logging.getLogger(__name__)


@dataclass
class HubLog:
    repo: LogRepo
    signer: Ed25519FileSigner | Pkcs11Ed25519Signer
    origin: str

    @classmethod
    def open(cls, store: Store, data_dir: Path, origin: str, key_uri: str | None = None) -> HubLog:
        """The log in ``store``; its key from a PKCS#11 token (``key_uri``) or a file."""
        signer: Ed25519FileSigner | Pkcs11Ed25519Signer = (
            Pkcs11Ed25519Signer.open(key_uri)
            if key_uri
            else Ed25519FileSigner.load_or_create(data_dir / "hub-log.key")
        )
        pem = signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (data_dir / "hub-log-key.pem").write_bytes(pem)
        log = cls(LogRepo(store.engine), signer, origin)
        log.repo.ensure_nodes()
        return log

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.for_key(self.origin, self.signer.public_key())

    def append(self, entries: Sequence[tuple[str, int, bytes]], conn: Transaction) -> None:
        """Append (utid, window, COSE bytes) entries, in order, inside the transaction that
        stores them (``Ingestor`` calls it there)."""
        self.repo.append([(utid, window, entry_hash(cose)) for utid, window, cose in entries], conn)

    def size(self) -> int:
        return self.repo.size()

    def checkpoint(self) -> tuple[Checkpoint, str]:
        """The signed checkpoint of the current tree (signed once per size, then kept)."""
        size = self.size()
        kept = self.repo.checkpoint_at(size)
        if kept is not None:
            return Checkpoint(self.origin, size, kept.root), kept.note
        with self.repo.nodes() as nodes:
            cp = Checkpoint(self.origin, size, merkle.range_hash(nodes, 0, size))
        note = sign_note(
            format_checkpoint(cp), self.origin, self.signer.public_key(), self.signer.sign
        )
        if not self.repo.add_checkpoint(StoredCheckpoint(size, cp.root, note, time.time_ns())):
            # still a valid note: receipts of what was acknowledged are served on a full disk,
            # and the same size is signed again, alike (Ed25519), once there is room to keep it
            _log.warning("disk full: the checkpoint of size %d is signed but not kept", size)
        return cp, note

    def history(self, limit: int = 200) -> list[dict[str, object]]:
        """Signed checkpoints the hub has issued, newest first."""
        return [
            {"size": c.size, "root": c.root.hex(), "created_ns": c.created_ns, "note": c.note}
            for c in self.repo.checkpoints(limit)
        ]

    def receipt(self, utid: str, window: int) -> tuple[bytes, str] | None:
        """COSE receipt and checkpoint note for the entry of (utid, window), if logged."""
        idx = self.repo.index_of(utid, window)
        if idx is None:
            return None
        cp, note = self.checkpoint()
        with self.repo.nodes() as nodes:
            path = merkle.inclusion_path_from(nodes, idx, cp.size)
        return build_log_receipt(self.signer, cp.size, idx, path, cp.root), note

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        current = self.size()
        if not 0 < size1 <= size2 <= current:
            raise ApiError(
                422, "invalid_request", f"need 0 < from <= to <= {current}, got {size1}..{size2}"
            )
        with self.repo.nodes() as nodes:
            return merkle.consistency_proof_from(nodes, size1, size2)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        current = self.size()
        if not 0 <= index < size <= current:
            raise ApiError(
                422, "invalid_request", f"need 0 <= index < size <= {current}, got {index}, {size}"
            )
        with self.repo.nodes() as nodes:
            return merkle.inclusion_path_from(nodes, index, size)
