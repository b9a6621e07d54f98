"""The agent's durable spool: SQLite in WAL mode, a journal of readings, one transaction per window.

Holds readings (journaled in small batches before their window is sealed), micro-proofs (the
outbox) and the chain state (next seq and window, prev hash, the journal's end and the seq
mark), so a restart seals what the journal holds and states exactly which seqs were lost
(ADR 0017).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import SpoolError, WindowsGone
from agent.outbox import OUTBOX_TRANSITIONS, OutboxEvent, OutboxPlan, OutboxState, advance
from agent.sealer import SealedWindow
from agent.window import ClosedWindow
from attestation.microproof import GENESIS_PREV, Gap, RecoveryRecord, ResetRecord
from attestation.reading import Reading

log = logging.getLogger(__name__)

__all__ = [
    "RESTART_REASON",
    "SCHEMA_VERSION",
    "JournalPolicy",
    "OutboxItem",
    "Recovery",
    "ShedPlan",
    "ShedPolicy",
    "Spool",
    "SpoolState",
    "plan_recovery",
    "plan_shedding",
]

# PRAGMA user_version; 0 = the first layout (no 'sent' state, no carry), 1 = before the journal,
# 2 = before the window counts table
SCHEMA_VERSION = 3
RESTART_REASON = "agent crash: readings acquired after the last journal batch"
WINDOW_GONE = (
    "older windows were dropped under the disk cap after the hub acknowledged them,"
    " or sealed by an earlier spool"
)
WAL_PAGES = 256  # checkpoint the WAL at ~1 MiB and truncate it back to that size
BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for the other connection's transaction

# the one definition of the windows table (the layout-0 migration rebuilds it from this too)
_WINDOWS = """
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
);"""

# What ``counts`` reports about the windows table: key -> its value for one row (``{r}``: the
# row, NEW or OLD in a trigger). Kept in ``window_counts`` by triggers: a full scan on every
# seal cost more with each window ever sealed (ADR 0048).
_COUNTED = {
    "windows": "1",
    "pending": "{r}.outbox = 'pending'",
    "sent": "{r}.outbox = 'sent'",
    "acked": "{r}.outbox = 'acked'",
    "refused": "{r}.outbox = 'refused'",
    "readings": "{r}.count",
    "windows_shed": "{r}.readings_shed",
}


def _adjust(*rows: str) -> str:
    """A trigger's UPDATE of the counts: ``+NEW`` adds the new row, ``-OLD`` takes the old off."""
    sets = [
        k + " = " + k + "".join(f" {r[0]} ({v.format(r=r[1:])})" for r in rows)
        for k, v in _COUNTED.items()
    ]
    return "UPDATE window_counts SET " + ", ".join(sets)  # noqa: S608 - our own column names


_COUNT_COLUMNS = ",\n".join(f"    {k} INTEGER NOT NULL DEFAULT 0" for k in _COUNTED)
# the counts computed once from the rows (a fresh spool, or one an older agent wrote)
_RECOUNT_SQL = "INSERT OR REPLACE INTO window_counts (id, {}, proofs_dropped) SELECT 1, {}, 0"
_RECOUNT = (
    _RECOUNT_SQL.format(
        ", ".join(_COUNTED),
        ", ".join(f"COALESCE(SUM({v.format(r='windows')}), 0)" for v in _COUNTED.values()),
    )
    + " FROM windows"
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL,      -- first seq not yet committed
    next_window INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,        -- SHA-256 of the last committed micro-proof
    reserved_seq INTEGER NOT NULL,  -- the seq mark: seqs below it may have been handed out
    carry_gaps TEXT NOT NULL DEFAULT '[]',  -- gap records owed, not signed yet
    journal_next INTEGER NOT NULL DEFAULT 0,  -- first seq not yet in the readings table
    recoveries INTEGER NOT NULL DEFAULT 0     -- starts that found an unfinished journal
);
{_WINDOWS}
CREATE INDEX IF NOT EXISTS windows_outbox ON windows (outbox, window);
-- one row: what ``counts`` reports, kept by the triggers below (``proofs_dropped``: window
-- rows deleted by shedding, ADR 0048)
CREATE TABLE IF NOT EXISTS window_counts (
    id INTEGER PRIMARY KEY CHECK (id = 1),
{_COUNT_COLUMNS},
    proofs_dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS windows_counted_insert AFTER INSERT ON windows BEGIN
    {_adjust("+NEW")};
END;
CREATE TRIGGER IF NOT EXISTS windows_counted_update AFTER UPDATE ON windows BEGIN
    {_adjust("-OLD", "+NEW")};
END;
CREATE TRIGGER IF NOT EXISTS windows_counted_delete AFTER DELETE ON windows BEGIN
    {_adjust("-OLD")}, proofs_dropped = proofs_dropped + 1;
END;
-- the journal and the committed readings in one table (each reading is written once): rows
-- at or above state.next_seq are journaled but not yet sealed; a window's readings are the
-- seq range first_seq..last_seq of its windows row, found through the primary key
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    signal TEXT NOT NULL,
    value REAL,
    unit TEXT NOT NULL,
    quality INTEGER NOT NULL,
    score REAL
);
-- a chain continued from the hub's head (ADR 0027): the reset record the next window signs
-- (key 18); deleted by the commit of that window
CREATE TABLE IF NOT EXISTS chain_reset (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    reason TEXT NOT NULL,
    hub_window INTEGER NOT NULL,
    hub_last_seq INTEGER NOT NULL
);
"""

# Version 0 had no 'sent' outbox state (SQLite cannot alter a CHECK: rebuild the table)
# and no carry_gaps column.
_MIGRATE_FROM_0 = (
    """
ALTER TABLE windows RENAME TO windows_v0;
DROP INDEX IF EXISTS windows_outbox;
""",
    _WINDOWS,
    """
INSERT INTO windows SELECT * FROM windows_v0;
DROP TABLE windows_v0;
ALTER TABLE state ADD COLUMN carry_gaps TEXT NOT NULL DEFAULT '[]';
""",
)

# Version 1 had no journal: readings carried their window's index (written at commit, never
# read) and the state no journal end; everything below next_seq was committed.
_MIGRATE_FROM_1 = """
ALTER TABLE state ADD COLUMN journal_next INTEGER NOT NULL DEFAULT 0;
ALTER TABLE state ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0;
UPDATE state SET journal_next = next_seq;
"""


@dataclass(frozen=True, slots=True)
class SpoolState:
    next_seq: int
    next_window: int
    prev_hash: bytes
    reserved_seq: int  # the seq mark
    journal_next: int = 0


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a start found left over by the last stop, in seq order.

    ``windows`` hold the readings the journal had but no window had sealed, each with the gap
    records that precede it; ``gaps`` precede the first new reading. ``record`` (payload key
    17) goes on the first window sealed, or None when the last stop left nothing unfinished.
    """

    windows: tuple[ClosedWindow, ...] = ()
    gaps: tuple[Gap, ...] = ()
    record: RecoveryRecord | None = None
    first_free_seq: int = 0


@dataclass(frozen=True, slots=True)
class JournalPolicy:
    """How the runtime journals readings (ADR 0017).

    ``write_ms``: at most one journal write per interval, at once and without an fsync (the
    OS has it: a kill -9 loses at most the readings numbered since the last write);
    ``interval_ms``: at most one fsync of those writes per interval (a power cut loses at
    most that; numbering runs only below a synced mark, so the loss is still stated).
    ``mark``: the seq mark written with a batch. Every sample that has entered the runtime
    is below the durable mark, so a crash states the seqs from the journal's end to the mark
    as lost; the mark runs one batch ahead (as many seqs as the last sync covered, at least
    the batch just written and one connector's largest emit), so stated
    loss exceeds true loss by at most that and the reads in flight (a connector that knows a
    read's size has it covered before the request goes out). When the headroom is used up,
    the sample waits for an early batch. With nothing new for ``idle_ms`` the mark falls back
    to the next seq: a kill of an idle agent states no loss at all.
    """

    interval_ms: int = 10
    idle_ms: int = 1000
    # journal writes (no fsync: a kill -9 cannot lose what the OS has) at most this often;
    # ``interval_ms`` is then how often they are fsynced (ADR 0032)
    write_ms: int = 2

    def mark(self, next_free: int, batch: int, burst: int) -> int:
        """The mark to write with a batch of ``batch`` readings; ``next_free``: the first seq
        not promised to a sample yet; ``burst``: the largest emit seen."""
        return next_free + max(batch, burst)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    window: int
    cose: bytes
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class ShedPlan:
    """Windows whose raw readings are deleted, and acknowledged windows whose micro-proof rows
    are deleted as well (only when the readings alone do not get under the cap, ADR 0048)."""

    windows: tuple[int, ...]
    reason: str
    proofs: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ShedPolicy:
    """How far below the cap shedding goes, so it does not run again on every window."""

    low_water: float = 0.9


READING_BYTES = 64  # what one reading's row is taken to cost when planning what to shed
PROOF_ROW_BYTES = 64  # a window row besides its micro-proof and the hub's answer


def _oldest_first(sizes: Sequence[tuple[int, int]], need: int) -> tuple[list[int], int]:
    """The first windows of ``sizes`` (window, bytes) whose bytes cover ``need``; what is
    still needed after them (> 0: all of them were not enough)."""
    chosen: list[int] = []
    for window, size in sizes:
        if need <= 0:
            break
        chosen.append(window)
        need -= size
    return chosen, need


def plan_shedding(
    used_bytes: int,
    cap_bytes: int,
    acked: Sequence[tuple[int, int]],
    policy: ShedPolicy = ShedPolicy(),  # a frozen value: safe as a default
    *,
    proofs: Sequence[tuple[int, int]] = (),
    first_unacked: int | None = None,
) -> ShedPlan:
    """Pick the oldest acknowledged windows' readings to drop until under the cap, then, if
    that is not enough, the oldest acknowledged windows' micro-proofs.

    ``acked`` lists (window, approximate bytes of its readings) of acknowledged windows whose
    readings are still held, oldest first. ``proofs`` lists (window, approximate bytes of its
    row) of every acknowledged window held, oldest first; ``first_unacked`` is the oldest
    window held that is not acknowledged (None: none). A proof goes only once every reading
    of ``acked`` is shed, never the newest acknowledged one (``factoryops agent recover``
    checks the hub's head against it) and never one after ``first_unacked`` (the windows
    held stay one run up to the chain's head: a rewind finds its start there or nowhere).
    Unsynced micro-proofs and readings are never shed: if that is not enough, the plan says so.
    """
    if used_bytes <= cap_bytes:
        return ShedPlan((), "under the cap")
    need = used_bytes - int(cap_bytes * policy.low_water)
    chosen, need = _oldest_first(acked, need)
    reason = "raw readings of synced windows, oldest first"
    dropped: list[int] = []
    droppable = [(w, size) for w, size in proofs[:-1] if first_unacked is None or w < first_unacked]
    if need > 0 and droppable:
        dropped, need = _oldest_first(droppable, need)
        reason += "; then micro-proofs of synced windows, oldest first (the newest is kept)"
    if need > 0:
        reason += "; still over the cap: unsynced data is kept (the hub is unreachable)"
    return ShedPlan(tuple(chosen), reason, tuple(dropped))


def plan_recovery(
    next_seq: int, journaled: Sequence[int], carried: Sequence[Gap], mark: int
) -> tuple[Gap, ...]:
    """Gap records owed at start, in seq order: the carried ones, plus every other seq in
    ``[next_seq, mark)`` that the journal does not hold.

    ``journaled``: the sorted seqs of readings journaled but not committed. A seq below the
    mark that is neither journaled nor carried was handed out to a reading a crash lost (or
    never handed out: the mark runs at most one journal batch ahead, ADR 0017).
    """
    explained = sorted(carried, key=lambda g: g.first)
    out: list[Gap] = []
    cursor = next_seq  # every seq below it is committed, journaled or in ``out``

    def lost_until(end: int) -> None:  # seqs cursor..end-1 are lost unless a carried gap says why
        nonlocal cursor
        while explained and explained[0].first < end:
            g = explained.pop(0)
            if g.first > cursor:
                out.append(Gap(cursor, g.first - 1, RESTART_REASON))
            out.append(g)
            cursor = max(cursor, g.last + 1)
        if end > cursor:
            out.append(Gap(cursor, end - 1, RESTART_REASON))
            cursor = end

    for seq in journaled:
        if seq >= cursor:
            lost_until(seq)
            cursor = seq + 1
    lost_until(mark)
    out.extend(explained)  # carried past the mark (a stop's own accounting): keep them
    return tuple(out)


def recovery_windows(
    readings: Sequence[Reading], gaps: Sequence[Gap], max_readings: int
) -> tuple[list[ClosedWindow], tuple[Gap, ...]]:
    """Cut recovered readings into windows: a gap record starts a window (the hub checks that
    a proof's leaves run from its first seq), and no window exceeds ``max_readings``.

    Returns the windows and the gap records left over (they precede the first new reading).
    """
    windows: list[ClosedWindow] = []
    todo = list(gaps)
    cur: list[Reading] = []
    before: list[Gap] = []
    for r in readings:
        owed = []
        while todo and todo[0].last < r.seq:
            owed.append(todo.pop(0))
        if cur and (owed or len(cur) >= max_readings):
            windows.append(ClosedWindow(tuple(cur), tuple(before)))
            cur, before = [], []
        before.extend(owed)
        cur.append(r)
    if cur:
        windows.append(ClosedWindow(tuple(cur), tuple(before)))
    return windows, tuple(todo)


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
    """One SQLite file, two connections: ``journal`` has its own (it runs on its own thread,
    so a journal batch never queues behind an upload's reads), everything else the other.
    Each connection is used by one thread at a time; SQLite serialises the writers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(path)
            self._migrate()
            self._db.execute(
                "INSERT OR IGNORE INTO state VALUES (1, 0, 0, ?, 0, '[]', 0, 0)", (GENESIS_PREV,)
            )
            self._restart_outbox()
            self._recover()
            self._jdb = _connect(path)
            # the journal's commits are synced by ``sync_journal``, outside SQLite's lock
            self._jdb.execute("PRAGMA synchronous=NORMAL")
            self._wal_fd: int | None = None
            self._wal_lock = threading.Lock()
        except sqlite3.Error as err:
            raise SpoolError(
                f"cannot open spool {path}: {err}",
                hint="check the path, permissions and free disk space",
            ) from err

    def _recover(self) -> None:
        """Find what the last stop left unfinished and make the plan durable at once.

        Readings journaled but never sealed come back; every other seq below the mark becomes a
        gap record. The plan is stored as carried gap records before anything new is numbered,
        so a crash during the recovery itself is recovered the same way at the next start.
        """
        db = self._db
        st = self.state()
        carried = [
            Gap(*g) for g in json.loads(db.execute("SELECT carry_gaps FROM state").fetchone()[0])
        ]
        self._recovered = self._readings(st.next_seq, None)
        gaps = plan_recovery(
            st.next_seq, [r.seq for r in self._recovered], carried, st.reserved_seq
        )
        self.first_free_seq = max(st.next_seq, st.reserved_seq, st.journal_next)
        #: gap records owed at start, in seq order (a clean stop's carried ones included)
        self.recovered_gaps: tuple[Gap, ...] = gaps
        self.recovery_record: RecoveryRecord | None = None
        if not self._recovered and all(g.reason != RESTART_REASON for g in gaps):
            return  # a clean stop (it may carry the reasons for seqs it could not commit)
        recoveries = db.execute("SELECT recoveries FROM state").fetchone()[0] + 1
        last = self._recovered[-1].seq if self._recovered else st.next_seq - 1
        self.recovery_record = RecoveryRecord(
            recovered=bool(self._recovered),
            recoveries=recoveries,
            last_journaled=last if last >= 0 else None,
        )
        with self._transaction("recovery"):
            db.execute(
                "UPDATE state SET carry_gaps = ?, reserved_seq = ?, journal_next = ?,"
                " recoveries = ?",
                (_gaps_json(gaps), self.first_free_seq, self.first_free_seq, recoveries),
            )

    def is_fresh(self) -> bool:
        """No window sealed, nothing journaled: the genesis state of a new (or lost) spool."""
        st = self.state()
        return (
            st.next_window == 0
            and st.prev_hash == GENESIS_PREV
            and max(st.next_seq, st.reserved_seq, st.journal_next) == 0
        )

    def continue_chain(self, window: int, last_seq: int, head_hash: bytes, reason: str) -> None:
        """Start this fresh spool's chain after the hub's head (window ``window``, last seq
        ``last_seq``, micro-proof hash ``head_hash``); the next window signs a reset record
        saying why (key 18, ADR 0027). Refuses a spool that already holds a chain."""
        if not self.is_fresh():
            raise SpoolError(
                f"spool {self.path} already holds a chain: it cannot continue the hub's",
                hint="move it aside first (factoryops agent recover does)",
            )
        nxt = last_seq + 1
        with self._transaction("continue chain"):
            self._db.execute(
                "UPDATE state SET next_seq = ?, next_window = ?, prev_hash = ?,"
                " reserved_seq = ?, journal_next = ?",
                (nxt, window + 1, head_hash, nxt, nxt),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO chain_reset VALUES (1, ?, ?, ?)",
                (reason, window, last_seq),
            )
        self.first_free_seq = nxt

    def pending_reset(self) -> ResetRecord | None:
        """The reset record the next window signs, if the chain was continued from the hub."""
        row = self._db.execute(
            "SELECT reason, hub_window, hub_last_seq FROM chain_reset"
        ).fetchone()
        return None if row is None else ResetRecord(*row)

    def recovery(self, max_readings: int) -> Recovery:
        """The windows to seal first and the gap records owed, in windows of at most
        ``max_readings``; the first window sealed carries ``recovery_record``."""
        windows, gaps = recovery_windows(self._recovered, self.recovered_gaps, max_readings)
        if windows and self.recovery_record is not None:
            first = windows[0]
            windows[0] = ClosedWindow(first.readings, first.gaps, recovery=self.recovery_record)
        return Recovery(tuple(windows), gaps, self.recovery_record, self.first_free_seq)

    @contextlib.contextmanager
    def _transaction(self, what: str, db: sqlite3.Connection | None = None) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; any failure rolls back, SQLite's wrapped in SpoolError."""
        db = db or self._db
        try:
            _begin_immediate(db)
            yield
            db.execute("COMMIT")
        except sqlite3.Error as err:
            _rollback(db)
            raise _spool_error(self.path, what, err) from err
        except BaseException:
            _rollback(db)
            raise

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
        with self._transaction("migrate"):
            if has_windows and version == 0:
                for stmt in _statements("".join(_MIGRATE_FROM_0)):
                    db.execute(stmt)
            if has_windows and version <= 1:
                self._migrate_from_1()
            for stmt in _statements(_SCHEMA):
                db.execute(stmt)
            if version < 3:  # the counts table is new (or the spool is): count the rows once
                db.execute(_RECOUNT)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_from_1(self) -> None:
        db = self._db
        for stmt in _statements(_MIGRATE_FROM_1):
            db.execute(stmt)
        columns = {row[1] for row in db.execute("PRAGMA table_info(readings)")}
        if "window" in columns:  # written at commit, never read: the seq range says it all
            db.execute("ALTER TABLE readings DROP COLUMN window")
        if "score" not in columns:  # the first layout had none
            db.execute("ALTER TABLE readings ADD COLUMN score REAL")

    def _restart_outbox(self) -> None:
        """Proofs in flight or refused when the agent stopped are tried again."""
        self._requeue((OutboxState.SENT, OutboxState.REFUSED))

    def requeue_in_flight(self) -> None:
        """Proofs marked sent whose answer never came back (their sender was cancelled) go
        back to the outbox; only for when no sender is running, as at shutdown."""
        self._requeue((OutboxState.SENT,))

    def _requeue(self, states: tuple[OutboxState, ...]) -> None:
        with self._transaction("requeue"):
            for state in states:
                after = advance(OUTBOX_TRANSITIONS, state, OutboxEvent.RESTART)
                self._db.execute(
                    "UPDATE windows SET outbox = ? WHERE outbox = ?", (after.value, state.value)
                )

    def sync_journal(self) -> None:
        """fsync every journal write that has returned (ADR 0032): the journal's connection
        commits without a sync (``synchronous=NORMAL``), and an fdatasync of the WAL file,
        which SQLite only appends to between checkpoints, makes those commits survive a
        power cut. It holds no SQLite lock, so writes go on while the disk is slow."""
        with self._wal_lock:  # the spool's and the journal-sync thread both call this
            if self._wal_fd is None:
                try:
                    self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
                except FileNotFoundError:  # nothing written since the last checkpoint reset
                    return
            fd = self._wal_fd
        try:
            os.fdatasync(fd)
        except OSError as err:
            out = SpoolError(
                f"spool {self.path}: syncing the journal failed: {err}",
                hint="check the disk: its free space and its health (dmesg)",
            )
            out.disk_full = err.errno == errno.ENOSPC  # retried like a full disk's commit
            raise out from err

    def close(self) -> None:
        with self._wal_lock:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
        self._jdb.close()
        self._db.close()

    def state(self) -> SpoolState:
        row = self._db.execute(
            "SELECT next_seq, next_window, prev_hash, reserved_seq, journal_next FROM state"
        ).fetchone()
        return SpoolState(*row)

    def journal(self, readings: Sequence[Reading], mark: int) -> None:
        """Write ``readings`` before their window is sealed, with the seq ``mark`` (seqs
        below it may be handed out): one transaction, in the OS's hands when this returns
        (a kill -9 cannot lose it) and on the disk after the next ``sync_journal`` or window
        commit (ADR 0017, 0032).

        Readings a window commit already wrote are skipped; the rest must continue the
        journal without a hole (a hole is our bug: it would read as journaled and be lost).
        Runs on the journal's own connection: call it from one thread at a time.
        """
        db = self._jdb
        with self._transaction("journal", db):
            (journal_next,) = db.execute("SELECT journal_next FROM state").fetchone()
            fresh = [r for r in readings if r.seq >= journal_next]
            if fresh and fresh[0].seq != journal_next:
                raise SpoolError(
                    f"journal batch starts at seq {fresh[0].seq}, the journal ends at"
                    f" {journal_next}: the readings between would be lost"
                )
            end = fresh[-1].seq + 1 if fresh else journal_next
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, NULL)",
                [(r.seq, r.ts_ns, r.signal, _stored(r.value), r.unit, r.quality) for r in fresh],
            )
            db.execute("UPDATE state SET journal_next = ?, reserved_seq = ?", (end, max(mark, end)))

    def release(self, next_free: int | None = None, carry: Sequence[Gap] = ()) -> None:
        """Clean stop: seqs up to ``next_free`` are spent, ``carry`` says why the rest are lost.

        With everything committed (``next_free`` None or the committed next seq) a restart
        owes no gap record; otherwise the next start seals what the journal holds and the
        window after it signs ``carry``.
        """
        with self._transaction("release"):
            self._db.execute(
                "UPDATE state SET reserved_seq ="
                " MAX(next_seq, journal_next, COALESCE(?, next_seq)), carry_gaps = ?",
                (next_free, _gaps_json(carry)),
            )

    def commit(self, sealed: SealedWindow, *, now_ns: int) -> None:
        """Micro-proof, outbox row, new chain state, and the window's readings the journal does
        not hold yet (with their scores): one transaction, fsynced before this returns.

        The fsync runs after SQLite's lock is released (``sync_journal``), so the journal's
        writes never wait behind it on a slow disk (ADR 0032); nothing reads the window
        before this returns (the uplink runs on this connection's thread). A commit retried
        after a failed fsync finds its window stored and only syncs again."""
        db = self._db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._commit(sealed, now_ns)
        finally:
            db.execute("PRAGMA synchronous=FULL")
        self.sync_journal()

    def _commit(self, sealed: SealedWindow, now_ns: int) -> None:
        rs = sealed.window.readings
        scores = sealed.scores or (None,) * len(rs)
        first, last = rs[0].seq, rs[-1].seq
        db = self._db
        with self._transaction("commit"):
            next_window, carry, journal_next = db.execute(
                "SELECT next_window, carry_gaps, journal_next FROM state"
            ).fetchone()
            if (
                next_window == sealed.index + 1
                and db.execute(
                    "SELECT 1 FROM windows WHERE window = ? AND cose = ?",
                    (sealed.index, sealed.cose),
                ).fetchone()
            ):
                return  # committed already; the fsync after it failed
            # readings below the journal's end are in the table already
            split = min(max(journal_next - first, 0), len(rs))
            if next_window != sealed.index:
                raise SpoolError(
                    f"window {sealed.index} committed out of turn (next is {next_window})"
                )
            if sealed.scores is not None and split:
                db.executemany(
                    "UPDATE readings SET score = ? WHERE seq = ?",
                    [(s, r.seq) for r, s in zip(rs[:split], scores[:split], strict=True)],
                )
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.seq, r.ts_ns, r.signal, _stored(r.value), r.unit, r.quality, s)
                    for r, s in zip(rs[split:], scores[split:], strict=True)
                ],
            )
            db.execute(
                "INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL, 0)",
                (sealed.index, first, last, len(rs), sealed.cose, now_ns),
            )
            # the gap records this proof signs are paid; those after it are still owed
            owed = [g for g in json.loads(carry) if g[0] > last] if carry != "[]" else []
            db.execute(
                "UPDATE state SET next_seq = ?, next_window = ?, prev_hash = ?,"
                " reserved_seq = MAX(reserved_seq, ?), journal_next = MAX(journal_next, ?),"
                " carry_gaps = ?",
                (
                    last + 1,
                    sealed.index + 1,
                    sealed.chain_hash,
                    last + 1,
                    last + 1,
                    json.dumps(owed),
                ),
            )
            db.execute("DELETE FROM chain_reset")  # the window signed it (sealed after it)

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
        with self._transaction("mark"):
            self._mark(windows, event, answer)

    def apply(self, plan: OutboxPlan) -> list[int]:
        """Apply what ``plan_outbox`` made of the hub's answer, in one transaction; returns the
        windows rewound. A rewind of windows the spool can no longer send (their readings
        shed or their proofs dropped) raises ``WindowsGone`` after the rest of the plan is
        stored (the acknowledgements are kept either way)."""
        rewound: list[int] = []
        refused: WindowsGone | None = None
        answer = dict(plan.answer) if plan.answer is not None else None
        with self._transaction("outbox"):
            self._mark(plan.ack, OutboxEvent.ACK, {"results": list(plan.results)})
            if plan.refuse is not None:
                self._mark([plan.refuse], OutboxEvent.REFUSE, answer)
            self._mark(plan.fail, OutboxEvent.FAIL)
            if plan.rewind_from is not None:
                assert answer is not None  # a rewind carries the hub's answer
                try:
                    rewound = self._rewind(plan.rewind_from, answer)
                except WindowsGone as err:
                    refused = err
        if refused is not None:
            raise refused
        return rewound

    def rewind(self, from_window: int, answer: dict[str, Any]) -> list[int]:
        """The hub lost windows it had acknowledged: make them pending again, oldest first.

        Raises ``WindowsGone`` if their raw readings were shed (the hub could not check the
        root) or their micro-proofs dropped (ADR 0048).
        """
        with self._transaction("rewind"):
            return self._rewind(from_window, answer)

    def _rewind(self, from_window: int, answer: dict[str, Any]) -> list[int]:
        oldest = self.oldest_window()
        if oldest is None or from_window < oldest:
            held = "no window" if oldest is None else f"no window before {oldest}"
            raise WindowsGone(
                f"the hub expects window {from_window} again but {self.path} holds {held}:"
                f" {WINDOW_GONE}",
                hint="restore the hub's newest backup; or accept the loss: `factoryops agent"
                " recover --config <agent.toml>` continues the hub's chain with a reset record",
            )
        rows = self._db.execute(
            "SELECT window, readings_shed FROM windows WHERE window >= ? AND outbox = 'acked'"
            " ORDER BY window",
            (from_window,),
        ).fetchall()
        shed = [w for w, s in rows if s]
        if shed:
            raise WindowsGone(
                f"the hub expects window {from_window} again but the readings of window"
                f" {shed[0]} were shed after it acknowledged them",
                hint="restore the hub's database, or re-enroll the device to start a new chain",
            )
        windows = [w for w, _ in rows]
        self._mark(windows, OutboxEvent.REWIND, answer)
        return windows

    def _mark(
        self, windows: Sequence[int], event: OutboxEvent, answer: dict[str, Any] | None = None
    ) -> None:
        """``mark`` inside the caller's transaction."""
        if not windows:
            return
        db = self._db
        payload = json.dumps(answer) if answer is not None else None
        marks = ",".join("?" * len(windows))
        found = dict(
            db.execute(
                f"SELECT window, outbox FROM windows WHERE window IN ({marks})",  # noqa: S608 - only placeholders
                list(windows),
            ).fetchall()
        )
        missing = sorted(set(windows) - set(found))
        if missing:
            raise self._no_window(missing[0])
        db.executemany(
            "UPDATE windows SET outbox = ?, ack = COALESCE(?, ack) WHERE window = ?",
            [
                (advance(OUTBOX_TRANSITIONS, OutboxState(found[w]), event).value, payload, w)
                for w in windows
            ],
        )

    def counts(self) -> dict[str, int]:
        """Windows held per outbox state, their readings, how many had their readings shed,
        and how many acknowledged proofs were dropped: one row, kept by triggers (ADR 0048)."""
        keys = (*_COUNTED, "proofs_dropped")
        row = self._db.execute(
            f"SELECT {', '.join(keys)} FROM window_counts"  # noqa: S608 - our column names
        ).fetchone()
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
            raise self._no_window(window)
        return row[0], list(self._readings(row[1], row[2]))

    def oldest_window(self) -> int | None:
        """The oldest window the spool holds (None: none); it holds every one after it."""
        row = self._db.execute("SELECT MIN(window) FROM windows").fetchone()
        return None if row[0] is None else int(row[0])

    def first_shed_after(self, window: int) -> int | None:
        """The oldest window after ``window`` whose readings were shed (None: none): it can
        no longer be uploaded, since the hub checks a window's root against its leaves."""
        row = self._db.execute(
            "SELECT MIN(window) FROM windows WHERE window > ? AND readings_shed != 0", (window,)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def _no_window(self, window: int) -> SpoolError:
        oldest = self.oldest_window()
        gone = f" ({WINDOW_GONE})" if oldest is not None and window < oldest else ""
        return SpoolError(f"no window {window} in {self.path}{gone}")

    def _readings(self, first: int, last: int | None) -> tuple[Reading, ...]:
        """Readings ``first..last`` (inclusive; ``None``: to the end of the journal)."""
        rows = self._db.execute(
            "SELECT seq, ts_ns, signal, value, unit, quality FROM readings"
            " WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (first, (1 << 63) - 1 if last is None else last),
        ).fetchall()
        return tuple(
            Reading(seq, ts, sig, _loaded(v), unit, q) for seq, ts, sig, v, unit, q in rows
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
        """Apply ``plan_shedding`` in one transaction; returns what was done (logged).

        Under the cap it reads nothing but the page counts: it runs after every seal."""
        used = self.used_bytes()
        if used <= cap_bytes:
            return plan_shedding(used, cap_bytes, ())
        db = self._db
        acked = db.execute(
            "SELECT window, count * ? FROM windows WHERE outbox = 'acked' AND readings_shed = 0"
            " ORDER BY window",
            (READING_BYTES,),
        ).fetchall()
        proofs = db.execute(
            "SELECT window, length(cose) + COALESCE(length(ack), 0) + ? FROM windows"
            " WHERE outbox = 'acked' ORDER BY window",
            (PROOF_ROW_BYTES,),
        ).fetchall()
        (first_unacked,) = db.execute(
            "SELECT MIN(window) FROM windows WHERE outbox IN ('pending', 'sent', 'refused')"
        ).fetchone()
        plan = plan_shedding(used, cap_bytes, acked, proofs=proofs, first_unacked=first_unacked)
        if not (plan.windows or plan.proofs):
            return plan
        with self._transaction("shed"):
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
            db.executemany("DELETE FROM windows WHERE window = ?", [(w,) for w in plan.proofs])
        log.info(
            "spool: %d bytes used, cap %d: shed the readings of %d windows (%s) and the"
            " micro-proofs of %d acknowledged windows (%s): %s",
            used,
            cap_bytes,
            len(plan.windows),
            _span(plan.windows),
            len(plan.proofs),
            _span(plan.proofs),
            plan.reason,
        )
        return plan


def _span(windows: Sequence[int]) -> str:
    """``3-17`` for the windows 3 to 17 (a plan takes them oldest first), ``none``."""
    if not windows:
        return "none"
    return str(windows[0]) if len(windows) == 1 else f"{windows[0]}-{windows[-1]}"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    # the other connection's transactions are short (a window commit writes one row and
    # the state): wait for them rather than fail
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # keep the WAL small and bounded: it counts against the disk cap
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
    return db


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


BEGIN_TRIES = 4  # BEGIN IMMEDIATE refused at once (SQLITE_BUSY) this often in a row fails


def _begin_immediate(db: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, tried again when SQLite says busy without using its busy timeout
    (it does so where waiting cannot help, e.g. a WAL index being rebuilt by the other
    connection): one such refusal under load once stopped an agent's uplink."""
    for attempt in range(BEGIN_TRIES):
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            busy = getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or attempt == BEGIN_TRIES - 1:
                raise
            log.warning("spool busy at BEGIN (%s); trying again", _errorname(err))
            time.sleep(0.05 * 2**attempt)
        else:
            return


def _errorname(err: sqlite3.Error) -> str:
    return str(getattr(err, "sqlite_errorname", "") or type(err).__name__)


def _spool_error(path: Path, what: str, err: sqlite3.Error) -> SpoolError:
    full = getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    out = SpoolError(
        f"spool {path}: {what} failed: {err} ({_errorname(err)})",
        hint=(
            "the disk is full: free space; the agent keeps the signed window and retries"
            if full
            else "check the spool file, its permissions and the disk"
        ),
    )
    out.disk_full = full
    return out


def _stored(value: float | str) -> float | bytes:
    """A text value is kept as its UTF-8 bytes: the REAL column would turn the text "20"
    into the number 20.0 (SQLite type affinity), and the leaf re-encoded for upload would
    no longer be the one signed. A BLOB is stored as it is."""
    return value.encode() if isinstance(value, str) else value


def _loaded(value: float | bytes | None) -> float | str:
    """Back from the column: NULL is NaN (SQLite has no NaN), a BLOB is text."""
    if value is None:
        return math.nan
    return value.decode() if isinstance(value, bytes) else value
