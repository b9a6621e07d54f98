"""The agent's durable spool: SQLite in WAL mode, one transaction per signed window.

Holds readings, micro-proofs (the outbox) and the chain state (next seq and window,
prev hash, reserved seq high-water mark), so a restart continues the chain exactly and
seqs handed out but never committed come back as a gap record.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import SpoolError
from agent.sealer import SealedWindow
from attestation.microproof import GENESIS_PREV, Gap
from attestation.reading import Reading

__all__ = ["OutboxItem", "ShedPlan", "Spool", "SpoolState", "plan_shedding"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL,      -- first seq not yet committed
    next_window INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,        -- SHA-256 of the last committed micro-proof
    reserved_seq INTEGER NOT NULL   -- seqs below this may have been handed out
);
CREATE TABLE IF NOT EXISTS windows (
    window INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    cose BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    outbox TEXT NOT NULL CHECK (outbox IN ('pending', 'acked', 'refused')),
    ack TEXT,
    readings_shed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS windows_outbox ON windows (outbox, window);
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    window INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    signal TEXT NOT NULL,
    value REAL,
    unit TEXT NOT NULL,
    quality INTEGER NOT NULL,
    score REAL
);
-- no index on readings.window: a window's readings are the seq range first_seq..last_seq of
-- its windows row, found through the primary key; an extra index costs ~1.5 us per reading
"""


@dataclass(frozen=True, slots=True)
class SpoolState:
    next_seq: int
    next_window: int
    prev_hash: bytes
    reserved_seq: int


@dataclass(frozen=True, slots=True)
class OutboxItem:
    window: int
    cose: bytes
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class ShedPlan:
    """Windows whose raw readings are deleted (their micro-proofs always stay)."""

    windows: tuple[int, ...]
    reason: str


def plan_shedding(used_bytes: int, cap_bytes: int, acked: Sequence[tuple[int, int]]) -> ShedPlan:
    """Pick the oldest acknowledged windows' readings to drop until under the cap.

    ``acked`` lists (window, approximate bytes of its readings), oldest first. Unsynced
    micro-proofs and readings are never shed: if that is not enough, the plan says so.
    """
    if used_bytes <= cap_bytes:
        return ShedPlan((), "under the cap")
    need = used_bytes - int(cap_bytes * 0.9)  # shed to 90 % so we do not shed on every window
    chosen: list[int] = []
    for window, size in acked:
        if need <= 0:
            break
        chosen.append(window)
        need -= size
    reason = "raw readings of synced windows, oldest first"
    if need > 0:
        reason += "; still over the cap: unsynced data is kept (the hub is unreachable)"
    return ShedPlan(tuple(chosen), reason)


class Spool:
    """One SQLite file; all writes on the caller's thread, one transaction each."""

    def __init__(self, path: Path, *, seq_block: int = 10_000) -> None:
        self.path = path
        self.seq_block = seq_block
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO state VALUES (1, 0, 0, ?, 0)", (GENESIS_PREV,))
        except sqlite3.Error as err:
            raise SpoolError(
                f"cannot open spool {path}: {err}",
                hint="check the path, permissions and free disk space",
            ) from err
        st = self.state()
        # seqs in [next_seq, reserved_seq) were handed out before a crash and never
        # committed: the next micro-proof carries them as a signed gap record.
        self.recovered_gap: Gap | None = (
            Gap(st.next_seq, st.reserved_seq - 1, "agent restart: readings not committed")
            if st.reserved_seq > st.next_seq
            else None
        )
        self.first_free_seq = max(st.next_seq, st.reserved_seq)

    def close(self) -> None:
        self._db.close()

    def state(self) -> SpoolState:
        row = self._db.execute(
            "SELECT next_seq, next_window, prev_hash, reserved_seq FROM state"
        ).fetchone()
        return SpoolState(*row)

    def reserve(self, upto_seq: int) -> int:
        """Durably record that seqs below ``upto_seq`` may be handed out; returns the mark."""
        st = self.state()
        if upto_seq <= st.reserved_seq:
            return st.reserved_seq
        mark = upto_seq + self.seq_block
        self._db.execute("UPDATE state SET reserved_seq = ?", (mark,))
        return mark

    def release(self) -> None:
        """Clean shutdown: no seq beyond the last committed one is in use any more."""
        self._db.execute("UPDATE state SET reserved_seq = next_seq")

    def commit(self, sealed: SealedWindow, *, now_ns: int) -> None:
        """Readings, micro-proof, outbox row and new chain state: one transaction, fsynced."""
        rs = sealed.window.readings
        scores = sealed.scores or (None,) * len(rs)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            st = db.execute("SELECT next_window FROM state").fetchone()
            if st[0] != sealed.index:
                raise SpoolError(f"window {sealed.index} committed out of turn (next is {st[0]})")
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.seq, sealed.index, r.ts_ns, r.signal, r.value, r.unit, r.quality, s)
                    for r, s in zip(rs, scores, strict=True)
                ],
            )
            db.execute(
                "INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL, 0)",
                (sealed.index, rs[0].seq, rs[-1].seq, len(rs), sealed.cose, now_ns),
            )
            db.execute(
                "UPDATE state SET next_seq = ?, next_window = ?, prev_hash = ?,"
                " reserved_seq = MAX(reserved_seq, ?)",
                (rs[-1].seq + 1, sealed.index + 1, sealed.chain_hash, rs[-1].seq + 1),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def pending(self, limit: int) -> list[OutboxItem]:
        """Oldest micro-proofs the hub has not acknowledged, with their readings."""
        items = []
        rows = self._db.execute(
            "SELECT window, cose, first_seq, last_seq FROM windows WHERE outbox = 'pending'"
            " ORDER BY window LIMIT ?",
            (limit,),
        ).fetchall()
        for window, cose, first, last in rows:
            items.append(OutboxItem(window, cose, self._readings(first, last)))
        return items

    def mark(self, windows: Sequence[int], outbox: str, ack: dict[str, Any] | None) -> None:
        payload = json.dumps(ack) if ack is not None else None
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany(
            "UPDATE windows SET outbox = ?, ack = ? WHERE window = ? AND outbox = 'pending'",
            [(outbox, payload, w) for w in windows],
        )
        self._db.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(outbox = 'pending'), 0),"
            " COALESCE(SUM(outbox = 'acked'), 0), COALESCE(SUM(count), 0) FROM windows"
        ).fetchone()
        return {"windows": row[0], "pending": row[1], "acked": row[2], "readings": row[3]}

    def window_readings(self, window: int) -> tuple[bytes, list[Reading]]:
        """The micro-proof and readings of one window (receipts, inspection)."""
        row = self._db.execute(
            "SELECT cose, first_seq, last_seq FROM windows WHERE window = ?", (window,)
        ).fetchone()
        if row is None:
            raise SpoolError(f"no window {window} in {self.path}")
        return row[0], list(self._readings(row[1], row[2]))

    def _readings(self, first: int, last: int) -> tuple[Reading, ...]:
        rows = self._db.execute(
            "SELECT seq, ts_ns, signal, value, unit, quality FROM readings"
            " WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (first, last),
        ).fetchall()
        return tuple(
            Reading(seq, ts, sig, float("nan") if v is None else v, unit, q)
            for seq, ts, sig, v, unit, q in rows
        )

    def used_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def shed(self, cap_bytes: int) -> ShedPlan:
        """Apply ``plan_shedding`` in one transaction; returns what was done."""
        acked = self._db.execute(
            "SELECT window, count * 64 FROM windows WHERE outbox = 'acked' AND readings_shed = 0"
            " ORDER BY window"
        ).fetchall()
        plan = plan_shedding(self.used_bytes(), cap_bytes, acked)
        if plan.windows:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "DELETE FROM readings WHERE seq BETWEEN"
                " (SELECT first_seq FROM windows WHERE window = ?)"
                " AND (SELECT last_seq FROM windows WHERE window = ?)",
                [(w, w) for w in plan.windows],
            )
            self._db.executemany(
                "UPDATE windows SET readings_shed = 1 WHERE window = ?",
                [(w,) for w in plan.windows],
            )
            self._db.execute("COMMIT")
        return plan
