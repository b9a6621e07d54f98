"""How the hub's ingest holds the database: a request's lazy read connection and the writer's
transaction (``Store.reads`` and ``Store.writer``), so no module outside ``storage/`` opens
a connection or names a driver's error.
"""

from __future__ import annotations

import errno
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

__all__ = [
    "Connect",
    "StorageFull",
    "Transaction",
    "WriteRace",
    "Writer",
    "disk_full",
    "lazy_reads",
]

_SQLITE_FULL = 13  # SQLite's result code for "database or disk is full"
_PG_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full


def disk_full(err: DBAPIError) -> bool:
    """Whether a database error says its disk is full (SQLite or PostgreSQL)."""
    orig = err.orig
    return (
        getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL
        or getattr(orig, "sqlstate", None) == _PG_DISK_FULL
    )


Transaction: TypeAlias = Connection
"""A connection inside an open transaction, handed to the repositories that write in it."""
Connect: TypeAlias = Callable[[], Transaction]
"""Opens (once) and returns a request's read connection."""


class WriteRace(Exception):
    """Another writer (a replica) got there first: the transaction rolled back as a whole.

    Raised for a chain head that moved (``HeadMoved``) and for a unique key another writer
    took meanwhile (the same proof stored, or a fork of it): the caller reads again and
    retries."""


@contextmanager
def lazy_reads(engine: Engine) -> Iterator[Connect]:
    """A request's read connection, opened only when a device lookup misses the cache or a
    duplicate check needs the database, and closed at the end."""
    conn: Connection | None = None

    def connect() -> Connection:
        nonlocal conn
        if conn is None:
            conn = engine.connect()
        return conn

    try:
        yield connect
    finally:
        if conn is not None:
            conn.close()


class StorageFull(Exception):
    """The disk under the database or the leaves file is full: the transaction rolled back
    as a whole, and the same writes can be tried again once there is room."""


@contextmanager
def _named() -> Iterator[None]:
    """Around a transaction: a unique-key violation, at a statement or at commit, raised as
    ``WriteRace``; a full disk, the database's or the leaves file's, as ``StorageFull``."""
    try:
        yield
    except IntegrityError as err:  # a unique key another writer took: a race, not a fault
        raise WriteRace(str(err.orig)) from err
    except OperationalError as err:
        if disk_full(err):
            raise StorageFull(str(err.orig)) from err
        raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(str(err)) from err
        raise


class Writer:
    """The ingest's write transactions. On SQLite one connection is kept from one group to
    the next: a pool checkout and return a group cost ~6 % of the hub's CPU a proof
    (measured with 8 and with 1 proof a request). One group at a time holds it (the lock);
    one that fails closes it, so the next group connects afresh. On a database server each
    transaction checks a connection out of the pool, whose ping before checkout finds one
    that a server restart closed (no group fails for it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._keep = engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction: committed when the block ends, rolled back when it raises
        (a unique-key race then raises ``WriteRace``, a full disk ``StorageFull``)."""
        if not self._keep:
            with _named(), self._engine.begin() as pooled:
                yield pooled
            return
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.invalidated:
                conn = self._conn = self._engine.connect()
                # an app dropped unclosed (tests) closes it: invalidate() closes the database
                # connection itself, where close() would hand it to a pool that may be gone
                weakref.finalize(self, _drop, conn)
            try:
                with _named(), conn.begin():
                    yield conn
            except BaseException:
                self._conn = None
                conn.close()
                raise

    @contextmanager
    def fresh(self) -> Iterator[Transaction]:
        """A write transaction on a pooled connection of its own (one proof stored again on
        fresh reads), with the same ``WriteRace``."""
        with _named(), self._engine.begin() as conn:
            yield conn

    def close(self) -> None:
        """Close the kept connection (the next transaction would open another)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _drop(conn: Connection) -> None:
    if not conn.closed:
        conn.invalidate()
