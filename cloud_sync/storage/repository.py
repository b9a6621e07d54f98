"""The hub's repository: every database operation ingest, receipts and the views need.

Runs on SQLite (WAL) and PostgreSQL through one SQLAlchemy Core engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Executable,
    Row,
    and_,
    bindparam,
    create_engine,
    event,
    false,
    func,
    insert,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from attestation.leafbatch import split_leaves
from attestation.microproof import MicroProof
from attestation.reading import Reading, decode_leaf
from cloud_sync.storage.bulk import BulkInsert, Prepared
from cloud_sync.storage.leaffile import LeafFile, LeavesMissing, leaf_file_of
from cloud_sync.storage.migrate import migrate
from cloud_sync.storage.session import Connect, Writer, WriteRace, lazy_reads
from cloud_sync.storage.tables import devices, window_leaves, windows

__all__ = ["Accepted", "DeviceRow", "HeadMoved", "Store", "StoredLeaves", "WindowRow"]


class HeadMoved(WriteRace):
    """Another writer advanced the chain head between our read and our write."""


@dataclass(frozen=True, slots=True)
class DeviceRow:
    utid: str
    public_key: bytes
    key_kind: str
    certificate: bytes
    name: str
    site: str
    revoked: bool
    created_ns: int
    head_window: int
    head_hash: bytes | None
    head_last_seq: int
    last_seen_ns: int | None
    n_readings: int
    rotated_to: str | None = None  # the key this device moved to (ADR 0038)
    rotated_from: str | None = None  # the key it came from: its chain continues that one


@dataclass(frozen=True, slots=True)
class WindowRow:
    utid: str
    window: int
    first_seq: int
    last_seq: int
    first_ts_ns: int
    last_ts_ns: int
    count: int
    root: bytes
    prev: bytes
    cose: bytes
    cose_sha256: bytes
    gaps: int
    received_ns: int
    # where its leaves are in a SQLite hub's leaves file (ADR 0053); None: ``window_leaves``
    leaves_offset: int | None = None
    leaves_length: int | None = None


@dataclass(frozen=True, slots=True)
class StoredLeaves:
    """A stored window's signed facts and its leaves as stored (``Store.stored_leaves``)."""

    utid: str
    window: int
    first_seq: int
    count: int
    root: bytes
    leaves: bytes | LeavesMissing | None  # None: a window of gap records only


@dataclass(frozen=True, slots=True)
class Accepted:
    """A proof that passed every check, ready to store: its row, leaves and parsed payload."""

    row: WindowRow
    leaves: bytes  # back to back, as uploaded and stored (a CBOR sequence; ADR 0008)
    proof: MicroProof


def _create_private(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (with the umask: often 0644); its
    -wal and -shm files take the database file's mode."""
    with contextlib.suppress(FileExistsError):  # an existing file keeps its mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


SQLITE_PAGE_SIZE = 4096


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # 4 KiB pages (SQLite's default) for a new file; an existing one keeps its size. Files
    # made 2026-12-05/06 have 16 KiB, chosen while a window's ~28 KB of leaves were a blob in
    # the database. With the leaves in their own file (ADR 0053) a proof's rows change a few
    # random index and table pages, each written whole to the WAL and again by the checkpoint:
    # 4 KiB cut the writer's system time ~15 µs a proof (docs/performance.md, 2026-12-06, night).
    cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Store:
    """Repository over one engine; every write is one transaction."""

    def __init__(self, engine: Engine, leaf_file: LeafFile | None = None) -> None:
        self.engine = engine
        # a SQLite file's leaves go to the file beside it; None: the ``window_leaves`` table
        self.leaf_file = leaf_file
        self.on_close: list[Callable[[], None]] = []  # connections held outside the pool

    @classmethod
    def open(cls, url: str) -> Store:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        leaf_file = None
        if sqlite and parsed.database not in (None, "", ":memory:"):
            _create_private(Path(parsed.database))
            leaf_file = LeafFile(leaf_file_of(Path(parsed.database).absolute()))
        # a ping before each checkout finds a PostgreSQL connection that a server restart
        # closed; a SQLite file has no server (and the ping cost ~5 % of an upload's CPU)
        engine = create_engine(url, pool_pre_ping=not sqlite)
        if sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        migrate(engine)  # Alembic; also brings pre-migration databases in
        return cls(engine, leaf_file)

    @classmethod
    def read_only(cls, database: Path) -> Store:
        """A SQLite hub database and its leaves file opened read-only, not migrated: for
        tools and tests that read a running or killed hub's files."""
        engine = create_engine(f"sqlite:///file:{database.absolute()}?mode=ro&uri=true")
        return cls(engine, LeafFile(leaf_file_of(database.absolute())))

    def reads(self) -> contextlib.AbstractContextManager[Connect]:
        """A request's read connection, opened on first use (``Connect``), closed after."""
        return lazy_reads(self.engine)

    def writer(self) -> Writer:
        """The ingest's write transactions; the store's ``close`` closes what it keeps."""
        writer = Writer(self.engine)
        self.on_close.append(writer.close)
        return writer

    def close(self) -> None:
        """Close the connections held outside the pool, then the pool (twice is harmless)."""
        closers, self.on_close = self.on_close, []
        for close in closers:  # first: dispose() closes only the pool's connections
            close()
        self.engine.dispose()
        if self.leaf_file is not None:
            self.leaf_file.close()  # its kept write buffer (after the writer thread ended)

    # devices -------------------------------------------------------------------------
    def add_device(
        self,
        *,
        utid: str,
        public_key: bytes,
        key_kind: str,
        certificate: bytes,
        name: str,
        site: str,
        now_ns: int,
    ) -> DeviceRow:
        """Insert a device, or return the existing row for the same key (idempotent)."""
        existing = self.device(utid)
        if existing is not None:
            return existing
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(devices).values(
                        utid=utid,
                        public_key=public_key,
                        key_kind=key_kind,
                        certificate=certificate,
                        name=name,
                        site=site,
                        revoked=False,
                        created_ns=now_ns,
                        head_window=-1,
                        head_hash=None,
                        head_last_seq=-1,
                        n_readings=0,
                    )
                )
        except IntegrityError:  # a concurrent registration of the same key won
            pass
        row = self.device(utid)
        if row is None:
            raise RuntimeError(f"device {utid} vanished right after insert")
        return row

    def _first(
        self, stmt: Executable, params: dict[str, Any], conn: Connection | None
    ) -> Row[Any] | None:
        """The first row of ``stmt``, inside ``conn`` when given, else on a connection of its
        own."""
        if conn is not None:
            return conn.execute(stmt, params).first()
        with self.engine.connect() as c:
            return c.execute(stmt, params).first()

    def device(self, utid: str, conn: Connection | None = None) -> DeviceRow | None:
        row = self._first(_DEVICE_BY_UTID, {"u": utid}, conn)
        return None if row is None else DeviceRow(**row._mapping)

    def sync_lags(self, utids: Sequence[str]) -> dict[str, int]:
        """Per device: ns between its newest window's last reading and the hub receiving it."""
        if not utids:
            return {}
        newest = (
            select(windows.c.utid, func.max(windows.c.window).label("w"))
            .where(windows.c.utid.in_(list(utids)))
            .group_by(windows.c.utid)
            .subquery()
        )
        q = select(windows.c.utid, windows.c.received_ns - windows.c.last_ts_ns).join(
            newest, (windows.c.utid == newest.c.utid) & (windows.c.window == newest.c.w)
        )
        with self.engine.connect() as conn:
            return {u: int(lag) for u, lag in conn.execute(q).all()}

    def recent_devices(self, limit: int) -> list[DeviceRow]:
        """Up to ``limit`` devices not revoked, the most recently seen first: one query for
        what a restarted hub's fleet uploads next (``Ingestor.warm``)."""
        q = (
            select(devices)
            .where(devices.c.revoked.is_(False))
            .order_by(devices.c.last_seen_ns.desc().nulls_last())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [DeviceRow(**r) for r in conn.execute(q).mappings()]

    def list_devices(self) -> list[DeviceRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(devices).order_by(devices.c.name)).mappings().all()
        return [DeviceRow(**r) for r in rows]

    def rotate_device(
        self, old: DeviceRow, *, utid: str, public_key: bytes, certificate: bytes, now_ns: int
    ) -> DeviceRow | None:
        """Move ``old`` to the key ``utid`` in one transaction: the new device continues the
        old one's chain head (same name, site, kind) and the old one is revoked, each naming
        the other (ADR 0038). None when ``old``'s head or state moved since it was read (a
        concurrent upload or rotation): nothing is changed then."""
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(devices)
                .where(
                    devices.c.utid == old.utid,
                    devices.c.revoked.is_(False),
                    devices.c.head_window == old.head_window,
                )
                .values(revoked=True, rotated_to=utid)
            ).rowcount
            if not moved:
                return None  # nothing was written
            conn.execute(
                insert(devices).values(
                    utid=utid,
                    public_key=public_key,
                    key_kind=old.key_kind,
                    certificate=certificate,
                    name=old.name,
                    site=old.site,
                    revoked=False,
                    created_ns=now_ns,
                    head_window=old.head_window,
                    head_hash=old.head_hash,
                    head_last_seq=old.head_last_seq,
                    n_readings=0,
                    rotated_from=old.utid,
                )
            )
            return self.device(utid, conn)

    def set_revoked(self, utid: str, revoked: bool) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(
                update(devices).where(devices.c.utid == utid).values(revoked=revoked)
            ).rowcount
        return bool(n)

    # windows -------------------------------------------------------------------------
    def window_at(self, utid: str, window: int, conn: Connection | None = None) -> WindowRow | None:
        """The device's accepted proof of ``window``, if any."""
        row = self._first(_WINDOW_AT, {"u": utid, "w": window}, conn)
        return None if row is None else WindowRow(**row._mapping)

    def window_for_seq(self, utid: str, seq: int) -> WindowRow | None:
        stmt = (
            select(windows)
            .where(windows.c.utid == utid, windows.c.first_seq <= seq, windows.c.last_seq >= seq)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else WindowRow(**row)

    def windows_of(self, utid: str, *, limit: int = 100) -> list[WindowRow]:
        stmt = (
            select(windows)
            .where(windows.c.utid == utid)
            .order_by(windows.c.window.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [WindowRow(**r) for r in conn.execute(stmt).mappings().all()]

    def _leaves(self, where: Sequence[Any]) -> bytes | None:
        """The blob ``_LEAVES_WHERE`` points at: in the leaves file or the ``window_leaves``
        row."""
        offset, length, blob = where
        if offset is None:
            return None if blob is None else bytes(blob)
        if self.leaf_file is None:
            raise RuntimeError("a window's leaves are in a leaves file, and this is no SQLite file")
        return self.leaf_file.read(offset, length)

    def leaves_of_window(self, utid: str, window: int) -> list[bytes]:
        """The window's leaves as the device signed them (empty when none are stored)."""
        stmt = _LEAVES_OF.where(windows.c.utid == utid, windows.c.window == window)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        blob = None if row is None else self._leaves(row)
        return [] if blob is None else split_leaves(blob)

    def stored_leaves(self) -> Iterator[StoredLeaves]:
        """Every window, by (utid, window), with its leaves as stored (``None``: it has none)
        or why they cannot be read (``LeavesMissing``): for ``factoryops hub check``."""
        w = windows.c
        stmt = (
            select(w.utid, w.window, w.first_seq, w.count, w.root, *_LEAVES_WHERE)
            .select_from(_WITH_LEAVES)
            .order_by(w.utid, w.window)
        )
        with self.engine.connect() as conn:
            for row in conn.execute(stmt.execution_options(yield_per=64)):
                utid, window, first_seq, count, root, *where = row
                try:
                    leaves: bytes | LeavesMissing | None = self._leaves(where)
                except LeavesMissing as err:
                    leaves = err
                yield StoredLeaves(utid, window, first_seq, count, bytes(root), leaves)

    def all_leaves(self) -> list[tuple[str, int, bytes]]:
        """(utid, window, leaves) of every window that has leaves, by (utid, window);
        ``LeavesMissing`` when any cannot be read."""
        out = []
        for stored in self.stored_leaves():
            if isinstance(stored.leaves, LeavesMissing):
                raise stored.leaves
            if stored.leaves is not None:
                out.append((stored.utid, stored.window, stored.leaves))
        return out

    def latest_readings(self, utid: str, at_least: int) -> list[Reading]:
        """The newest readings of a device (whole windows, oldest first), ``at_least`` of them
        when it has that many."""
        stmt = _LEAVES_OF.where(windows.c.utid == utid).order_by(windows.c.window.desc())
        out: list[list[Reading]] = []
        have = 0
        with self.engine.connect() as conn:
            for row in conn.execute(stmt.execution_options(yield_per=8)):
                if (blob := self._leaves(row)) is None:
                    continue  # a window of gap records only
                out.append([decode_leaf(leaf) for leaf in split_leaves(blob)])
                have += len(out[-1])
                if have >= at_least:
                    break
        return [r for window in reversed(out) for r in window]

    def store_windows(
        self,
        batch: Sequence[Accepted],
        *,
        expected_heads: Mapping[str, int],
        now_ns: int,
        conn: Connection,
    ) -> None:
        """Store accepted proofs (each device's in chain order), their leaves and the new chain
        heads inside ``conn``'s transaction: one statement a table, not one a proof.

        Raises ``HeadMoved`` when another writer advanced a head from ``expected_heads``
        first or the device was revoked meanwhile, and lets an ``IntegrityError`` through
        when the same proof or a fork was stored concurrently; the caller's transaction then
        rolls back as a whole.
        """
        if not batch:
            return
        by_device: dict[str, list[Accepted]] = {}
        for a in batch:
            by_device.setdefault(a.row.utid, []).append(a)
        heads = []  # every device's head moves in one statement
        for utid, items in by_device.items():
            counted = [a.row for a in items if a.row.count]
            heads.append(
                {
                    "u": utid,
                    "expected": expected_heads[utid],
                    "new_window": items[-1].row.window,
                    "new_hash": items[-1].row.cose_sha256,
                    "new_last_seq": counted[-1].last_seq if counted else None,
                    "seen": now_ns,
                    "added": sum(a.row.count for a in items),
                }
            )
        # each row matches at most once (utid is the key): the sum counts the heads that moved
        # (both SQLite's and psycopg's dialects report executemany's rowcount as the sum)
        if _ADVANCE_HEAD.rowcount(conn, heads) != len(heads):
            raise HeadMoved(", ".join(by_device))
        # the leaves as they arrived: nothing decoded, nothing re-encoded
        rows = [a.row for a in batch]
        if self.leaf_file is None:
            _INSERT_LEAVES(conn, [(a.row.utid, a.row.window, a.leaves) for a in batch if a.leaves])
        else:  # on disk before this transaction commits; the rows say where (ADR 0053)
            rows = _leaves_appended(self.leaf_file, batch)
        # statements built once with bound parameters (``.values(...)`` per call cost more
        # in SQLAlchemy's statement building than the database spent on the rows)
        _INSERT_WINDOWS(conn, [_WINDOW_VALUES(row) for row in rows])

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            n_dev = conn.execute(select(func.count()).select_from(devices)).scalar_one()
            n_win = conn.execute(select(func.count()).select_from(windows)).scalar_one()
            n_read = conn.execute(
                select(func.coalesce(func.sum(devices.c.n_readings), 0))
            ).scalar_one()
        return {"devices": int(n_dev), "windows": int(n_win), "readings": int(n_read)}

    def site_windows(self, site: str, lo: int, hi: int) -> tuple[list[Any], list[Any]]:
        """The site's device rows (by name), and their windows that overlap [lo, hi) in
        reading time (by device, window): one read, for reports."""
        with self.engine.connect() as conn:
            devs = conn.execute(
                select(devices).where(devices.c.site == site).order_by(devices.c.name)
            ).all()
            rows = conn.execute(
                select(windows)
                .where(
                    windows.c.utid.in_([d.utid for d in devs]),
                    windows.c.last_ts_ns >= lo,
                    windows.c.first_ts_ns < hi,
                )
                .order_by(windows.c.utid, windows.c.window)
            ).all()
        return list(devs), list(rows)


_ADVANCE_HEAD = Prepared(
    update(devices)
    .where(
        devices.c.utid == bindparam("u"),
        devices.c.head_window == bindparam("expected"),
        devices.c.revoked.is_(false()),  # a device revoked since the checks read it
    )
    .values(
        head_window=bindparam("new_window"),
        head_hash=bindparam("new_hash"),
        # a window of gap records only leaves the last seq where it was
        head_last_seq=func.coalesce(
            bindparam("new_last_seq", type_=BigInteger), devices.c.head_last_seq
        ),
        last_seen_ns=bindparam("seen"),
        n_readings=devices.c.n_readings + bindparam("added", type_=BigInteger),
    )
)
_INSERT_WINDOWS = BulkInsert(windows)


def _leaves_appended(leaf_file: LeafFile, batch: Sequence[Accepted]) -> list[WindowRow]:
    """Append the batch's leaves to the leaves file (durable on return); its rows, each
    saying where its leaves are."""
    offsets = iter(leaf_file.append([a.leaves for a in batch if a.leaves]))
    return [
        dataclasses.replace(a.row, leaves_offset=next(offsets), leaves_length=len(a.leaves))
        if a.leaves
        else a.row
        for a in batch
    ]


_WINDOW_VALUES = attrgetter(*_INSERT_WINDOWS.columns)  # a WindowRow as the table's row
# exactly the dataclass's fields: DeviceRow(**row._mapping)
_DEVICE_BY_UTID = select(*(devices.c[f] for f in DeviceRow.__dataclass_fields__)).where(
    devices.c.utid == bindparam("u")
)
_INSERT_LEAVES = BulkInsert(window_leaves)
# a window's leaves wherever they are: (offset, length) in the leaves file, or the blob
_WITH_LEAVES = windows.outerjoin(
    window_leaves,
    and_(window_leaves.c.utid == windows.c.utid, window_leaves.c.window == windows.c.window),
)
_LEAVES_WHERE = (windows.c.leaves_offset, windows.c.leaves_length, window_leaves.c.leaves)
_LEAVES_OF = select(*_LEAVES_WHERE).select_from(_WITH_LEAVES)
_WINDOW_AT = select(windows).where(
    windows.c.utid == bindparam("u"), windows.c.window == bindparam("w")
)
