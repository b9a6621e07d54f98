"""Repository of the transparency log's tables: entries, the perfect-subtree index and the
signed checkpoints (``cloud_sync.log.HubLog`` owns the hashing, signing and receipts).

Entries are appended inside the transaction that stores their windows (``append`` takes
that transaction's connection); on PostgreSQL one advisory lock serialises appends across
hub processes, so two replicas never number two entries alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, func, insert, select, text
from sqlalchemy.exc import OperationalError

from attestation import merkle
from cloud_sync.storage.bulk import BulkInsert, Prepared
from cloud_sync.storage.session import disk_full
from cloud_sync.storage.tables import log_checkpoints, log_entries, log_nodes

__all__ = ["LogRepo", "NodeReader", "StoredCheckpoint"]

_PG_APPEND_LOCK = 0x464F4C47  # "FOLG": one advisory lock serialises appends across hubs


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    created_ns: int


class NodeReader:
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


def _lock_appends(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_APPEND_LOCK})


def _add_nodes(conn: Connection, first: int, leaves: Sequence[bytes]) -> None:
    """Store the perfect subtrees that appending entries ``first, first + 1, ...`` completes."""
    reader = NodeReader(conn)
    nodes = []
    for i, leaf in enumerate(leaves, start=first):
        reader.cache[(0, i)] = leaf
        for lv, ix, h in merkle.perfect_nodes_completed(i, leaf, reader):
            reader.cache[(lv, ix)] = h  # the next entry may complete its parent
            nodes.append((lv, ix, h))
    _INSERT_NODES(conn, nodes)


@dataclass(frozen=True, slots=True)
class LogRepo:
    engine: Engine

    def append(self, entries: Sequence[tuple[str, int, bytes]], conn: Connection) -> None:
        """Append (utid, window, entry hash) entries, in order, inside ``conn``'s transaction
        (one statement a table, not one an entry)."""
        if not entries:
            return
        _lock_appends(conn)
        size = int(_SIZE.scalar(conn))
        _INSERT_ENTRIES(
            conn, [(size + i, utid, window, leaf) for i, (utid, window, leaf) in enumerate(entries)]
        )
        _add_nodes(conn, size, [leaf for _, _, leaf in entries])

    def ensure_nodes(self) -> None:
        """Build the subtree index of a log written before it existed (once, O(n))."""
        with self.engine.begin() as conn:
            _lock_appends(conn)
            size = int(_SIZE.scalar(conn))
            have = conn.execute(select(func.count()).select_from(log_nodes)).scalar_one()
            if size < 2 or have:
                return
            rows = conn.execute(select(log_entries.c.entry_hash).order_by(log_entries.c.idx)).all()
            _add_nodes(conn, 0, [leaf for (leaf,) in rows])

    def size(self) -> int:
        with self.engine.connect() as conn:
            return int(_SIZE.scalar(conn))

    @contextmanager
    def nodes(self) -> Iterator[NodeReader]:
        """A reader of the tree's hashes over one connection, for one proof or root."""
        with self.engine.connect() as conn:
            yield NodeReader(conn)

    def index_of(self, utid: str, window: int) -> int | None:
        """The log index of the entry of (utid, window), if logged."""
        with self.engine.connect() as conn:
            idx = conn.execute(
                select(log_entries.c.idx).where(
                    log_entries.c.utid == utid, log_entries.c.window == window
                )
            ).scalar()
        return None if idx is None else int(idx)

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(log_checkpoints).where(log_checkpoints.c.size == size)
            ).first()
        return None if row is None else _checkpoint(row)

    def add_checkpoint(self, cp: StoredCheckpoint) -> bool:
        """Keep a signed checkpoint; one already kept for its size stays as it is. False
        when the database's disk is full and it could not be kept."""
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(
                    select(log_checkpoints.c.size).where(log_checkpoints.c.size == cp.size)
                ).first()
                if exists is None:
                    conn.execute(
                        insert(log_checkpoints).values(
                            size=cp.size, root=cp.root, note=cp.note, created_ns=cp.created_ns
                        )
                    )
        except OperationalError as err:
            if not disk_full(err):
                raise
            return False
        return True

    def checkpoints(self, limit: int) -> list[StoredCheckpoint]:
        """The kept checkpoints, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(log_checkpoints).order_by(log_checkpoints.c.size.desc()).limit(limit)
            ).all()
        return [_checkpoint(r) for r in rows]


def _checkpoint(row: Row[Any]) -> StoredCheckpoint:
    return StoredCheckpoint(row.size, row.root, row.note, row.created_ns)
