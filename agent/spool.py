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
from agent.window import OUTBOX_TRANSITIONS, OutboxEvent, OutboxState, advance
from attestation.microproof import GENESIS_PREV, Gap
from attestation.reading import Reading

__all__ = [
    "RESTART_REASON",
    "SCHEMA_VERSION",
    "OutboxItem",
    "ShedPlan",
    "ShedPolicy",
    "Spool",
    "SpoolState",
    "plan_shedding",
    "recovery_gaps",
]

SCHEMA_VERSION = 1  # PRAGMA user_version; 0 = the first layout (no 'sent' state, no carry)
RESTART_REASON = "agent restart: readings not committed"
WAL_PAGES = 256  # checkpoint the WAL at ~1 MiB and truncate it back to that size

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL,      -- first seq not yet committed
    next_window INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,        -- SHA-256 of the last committed micro-proof
    reserved_seq INTEGER NOT NULL,  -- seqs below this may have been handed out
    carry_gaps TEXT NOT NULL DEFAULT '[]'  -- gap records a clean stop could not sign yet
);
CREATE TABLE IF NOT EXISTS windows (
    window INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    cose BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    outbox TEXT NOT NULL CHECK (outbox IN ('pending', 'sent', 'acked', 'refused')),
    ack TEXT,                       -- the hub's answer (JSON), acknowledgement or refusal
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

# Version 0 had no 'sent' outbox state (SQLite cannot alter a CHECK: rebuild the table)
# and no carry_gaps column.
_MIGRATE_FROM_0 = """
ALTER TABLE windows RENAME TO windows_v0;
DROP INDEX IF EXISTS windows_outbox;
CREATE TABLE windows (
    window INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    cose BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    outbox TEXT NOT NULL CHECK (outbox IN ('pending', 'sent', 'acked', 'refused')),
    ack TEXT,
    readings_shed INTEGER NOT NULL DEFAULT 0
);
INSERT INTO windows SELECT * FROM windows_v0;
DROP TABLE windows_v0;
ALTER TABLE state ADD COLUMN carry_gaps TEXT NOT NULL DEFAULT '[]';
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


@dataclass(frozen=True, slots=True)
class ShedPolicy:
    """How far below the cap shedding goes, so it does not run again on every window."""

    low_water: float = 0.9


def plan_shedding(
    used_bytes: int,
    cap_bytes: int,
    acked: Sequence[tuple[int, int]],
    policy: ShedPolicy = ShedPolicy(),  # a frozen value: safe as a default
) -> ShedPlan:
    """Pick the oldest acknowledged windows' readings to drop until under the cap.

    ``acked`` lists (window, approximate bytes of its readings), oldest first. Unsynced
    micro-proofs and readings are never shed: if that is not enough, the plan says so.
    """
    if used_bytes <= cap_bytes:
        return ShedPlan((), "under the cap")
    need = used_bytes - int(cap_bytes * policy.low_water)
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


def recovery_gaps(next_seq: int, reserved_seq: int, carried: Sequence[Gap]) -> tuple[Gap, ...]:
    """Gap records owed at start: carried ones, plus every other seq in [next, reserved).

    Seqs in that range were handed out but never committed; a clean stop carries the
    ones it knows the reason for (a queue overflow), a crash leaves the rest unexplained.
    """
    out: list[Gap] = []
    cursor = next_seq
    for g in sorted(carried, key=lambda g: g.first):
        if g.first > cursor:
            out.append(Gap(cursor, g.first - 1, RESTART_REASON))
        out.append(g)
        cursor = max(cursor, g.last + 1)
    if reserved_seq > cursor:
        out.append(Gap(cursor, reserved_seq - 1, RESTART_REASON))
    return tuple(out)


def _statements(script: str) -> list[str]:
    """Split a script into statements (executescript would commit our transaction)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return out


def _gaps_json(gaps: Sequence[Gap]) -> str:
    return json.dumps([[g.first, g.last, g.reason] for g in gaps])


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
            # keep the WAL small and bounded: it counts against the disk cap
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
            self._migrate()
            self._db.execute(
                "INSERT OR IGNORE INTO state VALUES (1, 0, 0, ?, 0, '[]')", (GENESIS_PREV,)
            )
            self._restart_outbox()
            st = self.state()
            carried = [
                Gap(*g)
                for g in json.loads(self._db.execute("SELECT carry_gaps FROM state").fetchone()[0])
            ]
        except sqlite3.Error as err:
            raise SpoolError(
                f"cannot open spool {path}: {err}",
                hint="check the path, permissions and free disk space",
            ) from err
        # seqs in [next_seq, reserved_seq) were handed out and never committed: the next
        # micro-proof carries them as signed gap records
        self.recovered_gaps: tuple[Gap, ...] = recovery_gaps(st.next_seq, st.reserved_seq, carried)
        self.first_free_seq = max(st.next_seq, st.reserved_seq)

    def _migrate(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError(
                f"spool {self.path} has layout {version}, this agent knows up to {SCHEMA_VERSION}",
                hint="run the newer agent that wrote it, or move the spool aside",
            )
        has_windows = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'windows'"
        ).fetchone()
        db.execute("BEGIN IMMEDIATE")
        try:
            if has_windows and version == 0:
                for stmt in _statements(_MIGRATE_FROM_0):
                    db.execute(stmt)
            for stmt in _statements(_SCHEMA):
                db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _restart_outbox(self) -> None:
        """Proofs in flight or refused when the agent stopped are tried again."""
        self._requeue((OutboxState.SENT, OutboxState.REFUSED))

    def requeue_in_flight(self) -> None:
        """Proofs marked sent whose answer never came back (their sender was cancelled) go
        back to the outbox; only for when no sender is running, as at shutdown."""
        self._requeue((OutboxState.SENT,))

    def _requeue(self, states: tuple[OutboxState, ...]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        for state in states:
            after = advance(OUTBOX_TRANSITIONS, state, OutboxEvent.RESTART)
            self._db.execute(
                "UPDATE windows SET outbox = ? WHERE outbox = ?", (after.value, state.value)
            )
        self._db.execute("COMMIT")

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
        self._write("UPDATE state SET reserved_seq = ?", (mark,))
        return mark

    def release(self, next_free: int | None = None, carry: Sequence[Gap] = ()) -> None:
        """Clean stop: seqs up to ``next_free`` are spent, ``carry`` says why the rest are lost.

        With everything committed (``next_free`` None or the committed next seq) a restart
        owes no gap record; otherwise the next micro-proof signs ``carry``.
        """
        self._write(
            "UPDATE state SET reserved_seq = MAX(next_seq, COALESCE(?, next_seq)), carry_gaps = ?",
            (next_free, _gaps_json(carry)),
        )

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
            # the gap records this proof signs are paid: nothing is carried any more
            db.execute(
                "UPDATE state SET next_seq = ?, next_window = ?, prev_hash = ?,"
                " reserved_seq = MAX(reserved_seq, ?), carry_gaps = '[]'",
                (rs[-1].seq + 1, sealed.index + 1, sealed.chain_hash, rs[-1].seq + 1),
            )
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise _spool_error(self.path, "commit", err) from err
        except BaseException:
            self._rollback()
            raise

    def pending(self, limit: int) -> list[OutboxItem]:
        """Oldest micro-proofs waiting to be sent, with their readings."""
        items = []
        rows = self._db.execute(
            "SELECT window, cose, first_seq, last_seq FROM windows WHERE outbox = 'pending'"
            " ORDER BY window LIMIT ?",
            (limit,),
        ).fetchall()
        for window, cose, first, last in rows:
            items.append(OutboxItem(window, cose, self._readings(first, last)))
        return items

    def mark(
        self, windows: Sequence[int], event: OutboxEvent, answer: dict[str, Any] | None = None
    ) -> None:
        """Move ``windows`` through the outbox lifecycle; ``answer`` is the hub's, kept as JSON.

        Raises ``IllegalTransition`` (and changes nothing) if any window may not take ``event``.
        """
        if not windows:
            return
        db = self._db
        payload = json.dumps(answer) if answer is not None else None
        db.execute("BEGIN IMMEDIATE")
        try:
            marks = ",".join("?" * len(windows))
            found = dict(
                db.execute(
                    f"SELECT window, outbox FROM windows WHERE window IN ({marks})",  # noqa: S608 - only placeholders
                    list(windows),
                ).fetchall()
            )
            missing = sorted(set(windows) - set(found))
            if missing:
                raise SpoolError(f"no window {missing[0]} in {self.path}")
            db.executemany(
                "UPDATE windows SET outbox = ?, ack = COALESCE(?, ack) WHERE window = ?",
                [
                    (advance(OUTBOX_TRANSITIONS, OutboxState(found[w]), event).value, payload, w)
                    for w in windows
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def rewind(self, from_window: int, answer: dict[str, Any]) -> list[int]:
        """The hub lost windows it had acknowledged: make them pending again, oldest first.

        Fails if their raw readings were already shed (the hub could not check the root).
        """
        rows = self._db.execute(
            "SELECT window, readings_shed FROM windows WHERE window >= ? AND outbox = 'acked'"
            " ORDER BY window",
            (from_window,),
        ).fetchall()
        shed = [w for w, s in rows if s]
        if shed:
            raise SpoolError(
                f"the hub expects window {from_window} again but the readings of window"
                f" {shed[0]} were shed after it acknowledged them",
                hint="restore the hub's database, or re-enroll the device to start a new chain",
            )
        windows = [w for w, _ in rows]
        self.mark(windows, OutboxEvent.REWIND, answer)
        return windows

    def counts(self) -> dict[str, int]:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(outbox = 'pending'), 0),"
            " COALESCE(SUM(outbox = 'sent'), 0), COALESCE(SUM(outbox = 'acked'), 0),"
            " COALESCE(SUM(outbox = 'refused'), 0), COALESCE(SUM(count), 0),"
            " COALESCE(SUM(readings_shed), 0) FROM windows"
        ).fetchone()
        keys = ("windows", "pending", "sent", "acked", "refused", "readings", "windows_shed")
        return dict(zip(keys, row, strict=True))

    def last_answer(self) -> tuple[int, str, dict[str, Any] | None] | None:
        """The newest window that has an answer from the hub: (window, state, answer)."""
        row = self._db.execute(
            "SELECT window, outbox, ack FROM windows WHERE ack IS NOT NULL"
            " ORDER BY window DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return row[0], row[1], json.loads(row[2])

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
        """Bytes the spool holds: pages in use plus the WAL.

        Free pages (left by shed readings) are not counted: SQLite reuses them, so the file
        does not grow again until they are full.
        """
        page_size, pages, free = (
            self._db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_size", "page_count", "freelist_count")
        )
        wal = Path(f"{self.path}-wal")
        return int((pages - free) * page_size) + (wal.stat().st_size if wal.exists() else 0)

    def shed(self, cap_bytes: int) -> ShedPlan:
        """Apply ``plan_shedding`` in one transaction; returns what was done."""
        acked = self._db.execute(
            "SELECT window, count * 64 FROM windows WHERE outbox = 'acked' AND readings_shed = 0"
            " ORDER BY window"
        ).fetchall()
        plan = plan_shedding(self.used_bytes(), cap_bytes, acked)
        if plan.windows:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "DELETE FROM readings WHERE seq BETWEEN"
                    " (SELECT first_seq FROM windows WHERE window = ?)"
                    " AND (SELECT last_seq FROM windows WHERE window = ?)",
                    [(w, w) for w in plan.windows],
                )
                db.executemany(
                    "UPDATE windows SET readings_shed = 1 WHERE window = ?",
                    [(w,) for w in plan.windows],
                )
                db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise _spool_error(self.path, "shed", err) from err
            except BaseException:
                self._rollback()
                raise
        return plan

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as err:
            raise _spool_error(self.path, "write", err) from err

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _spool_error(path: Path, what: str, err: sqlite3.Error) -> SpoolError:
    full = getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    out = SpoolError(
        f"spool {path}: {what} failed: {err}",
        hint=(
            "the disk is full: free space; the agent keeps the signed window and retries"
            if full
            else "check the spool file, its permissions and the disk"
        ),
    )
    out.disk_full = full
    return out
