"""The hub's append-only RFC 9162 transparency log over accepted micro-proofs.

Entries are appended inside the transaction that stores each proof; checkpoints are C2SP
signed notes and receipts are COSE receipts, both with the hub's Ed25519 log key.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, Engine, bindparam, func, insert, select, text

from attestation import merkle
from attestation.logreceipt import build_log_receipt, entry_hash
from attestation.signednote import Checkpoint, NoteVerifier, format_checkpoint, sign_note
from attestation.signers.pkcs11 import Pkcs11Ed25519Signer
from attestation.signers.software import Ed25519FileSigner
from cloud_sync.errors import ApiError
from cloud_sync.storage.bulk import BulkInsert, Prepared
from cloud_sync.storage.tables import log_checkpoints, log_entries, log_nodes

__all__ = ["HubLog"]

_PG_APPEND_LOCK = 0x464F4C47  # "FOLG": one advisory lock serialises appends across hubs


class _NodeReader:
    """Perfect-subtree hashes from the database (level 0: the entries), cached per use."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cache: dict[tuple[int, int], bytes] = {}

    def __call__(self, level: int, idx: int) -> bytes:
        key = (level, idx)
        if key not in self.cache:
            if level == 0:
                value = _ENTRY_HASH.scalar(self.conn, {"i": idx})
            else:
                value = _NODE_HASH.scalar(self.conn, {"l": level, "i": idx})
            if value is None:
                raise RuntimeError(f"log node ({level}, {idx}) missing: the log index is damaged")
            self.cache[key] = bytes(value)
        return self.cache[key]


# the tree size: entries are numbered 0..n-1, so max(idx) + 1 reads one index entry where
# COUNT(*) would scan the whole table (SQLite) on every append
_SIZE = Prepared(select(func.coalesce(func.max(log_entries.c.idx), -1) + 1))
_INSERT_ENTRIES = BulkInsert(log_entries)  # (idx, utid, window, entry_hash)
_ENTRY_HASH = Prepared(select(log_entries.c.entry_hash).where(log_entries.c.idx == bindparam("i")))
_NODE_HASH = Prepared(
    select(log_nodes.c.hash).where(
        log_nodes.c.level == bindparam("l"), log_nodes.c.idx == bindparam("i")
    )
)
_INSERT_NODES = BulkInsert(log_nodes)  # (level, idx, hash)


def _add_nodes(conn: Connection, first: int, leaves: Sequence[bytes]) -> None:
    """Store the perfect subtrees that appending entries ``first, first + 1, ...`` completes."""
    reader = _NodeReader(conn)
    nodes = []
    for i, leaf in enumerate(leaves, start=first):
        reader.cache[(0, i)] = leaf
        for lv, ix, h in merkle.perfect_nodes_completed(i, leaf, reader):
            reader.cache[(lv, ix)] = h  # the next entry may complete its parent
            nodes.append((lv, ix, h))
    _INSERT_NODES(conn, nodes)


@dataclass
class HubLog:
    engine: Engine
    signer: Ed25519FileSigner | Pkcs11Ed25519Signer
    origin: str

    @classmethod
    def open(
        cls, engine: Engine, data_dir: Path, origin: str, key_uri: str | None = None
    ) -> HubLog:
        """The log over ``engine``; its key from a PKCS#11 token (``key_uri``) or a file."""
        signer: Ed25519FileSigner | Pkcs11Ed25519Signer = (
            Pkcs11Ed25519Signer.open(key_uri)
            if key_uri
            else Ed25519FileSigner.load_or_create(data_dir / "hub-log.key")
        )
        pem = signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (data_dir / "hub-log-key.pem").write_bytes(pem)
        log = cls(engine, signer, origin)
        log.ensure_nodes()
        return log

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.for_key(self.origin, self.signer.public_key())

    def append(self, entries: Sequence[tuple[str, int, bytes]], conn: Connection) -> None:
        """The ``on_accepted`` hook: append (utid, window, COSE bytes) entries, in order,
        inside the transaction that stores them (one statement a table, not one an entry)."""
        if not entries:
            return
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_APPEND_LOCK})
        size = int(_SIZE.scalar(conn))
        leaves = [entry_hash(cose) for _, _, cose in entries]
        _INSERT_ENTRIES(
            conn,
            [
                (size + i, utid, window, leaf)
                for i, ((utid, window, _), leaf) in enumerate(zip(entries, leaves, strict=True))
            ],
        )
        _add_nodes(conn, size, leaves)

    def ensure_nodes(self) -> None:
        """Build the subtree index of a log written before it existed (once, O(n))."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_APPEND_LOCK})
            size = int(_SIZE.scalar(conn))
            have = conn.execute(select(func.count()).select_from(log_nodes)).scalar_one()
            if size < 2 or have:
                return
            rows = conn.execute(select(log_entries.c.entry_hash).order_by(log_entries.c.idx)).all()
            _add_nodes(conn, 0, [leaf for (leaf,) in rows])

    def size(self) -> int:
        with self.engine.connect() as conn:
            return int(_SIZE.scalar(conn))

    def checkpoint(self) -> tuple[Checkpoint, str]:
        """The signed checkpoint of the current tree (signed once per size, then kept)."""
        size = self.size()
        with self.engine.connect() as conn:
            row = conn.execute(
                select(log_checkpoints.c.root, log_checkpoints.c.note).where(
                    log_checkpoints.c.size == size
                )
            ).first()
        if row is not None:
            return Checkpoint(self.origin, size, row[0]), row[1]
        with self.engine.connect() as conn:
            cp = Checkpoint(self.origin, size, merkle.range_hash(_NodeReader(conn), 0, size))
        note = sign_note(
            format_checkpoint(cp), self.origin, self.signer.public_key(), self.signer.sign
        )
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(log_checkpoints.c.size).where(log_checkpoints.c.size == size)
            ).first()
            if exists is None:
                conn.execute(
                    insert(log_checkpoints).values(
                        size=size, root=cp.root, note=note, created_ns=time.time_ns()
                    )
                )
        return cp, note

    def history(self, limit: int = 200) -> list[dict[str, object]]:
        """Signed checkpoints the hub has issued, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(log_checkpoints).order_by(log_checkpoints.c.size.desc()).limit(limit)
            ).all()
        return [
            {"size": r.size, "root": r.root.hex(), "created_ns": r.created_ns, "note": r.note}
            for r in rows
        ]

    def receipt(self, utid: str, window: int) -> tuple[bytes, str] | None:
        """COSE receipt and checkpoint note for the entry of (utid, window), if logged."""
        with self.engine.connect() as conn:
            idx = conn.execute(
                select(log_entries.c.idx).where(
                    log_entries.c.utid == utid, log_entries.c.window == window
                )
            ).scalar()
        if idx is None:
            return None
        cp, note = self.checkpoint()
        with self.engine.connect() as conn:
            path = merkle.inclusion_path_from(_NodeReader(conn), int(idx), cp.size)
        return build_log_receipt(self.signer, cp.size, int(idx), path, cp.root), note

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        current = self.size()
        if not 0 < size1 <= size2 <= current:
            raise ApiError(
                422, "invalid_request", f"need 0 < from <= to <= {current}, got {size1}..{size2}"
            )
        with self.engine.connect() as conn:
            return merkle.consistency_proof_from(_NodeReader(conn), size1, size2)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        current = self.size()
        if not 0 <= index < size <= current:
            raise ApiError(
                422, "invalid_request", f"need 0 <= index < size <= {current}, got {index}, {size}"
            )
        with self.engine.connect() as conn:
            return merkle.inclusion_path_from(_NodeReader(conn), index, size)
