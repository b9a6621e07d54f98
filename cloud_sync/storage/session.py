"""How the hub's ingest holds the database: a request's lazy read connection and the writer's
transaction (``Store.reads`` and ``Store.writer``), so no module outside ``storage/`` opens
a connection or names a driver's error.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

__all__ = ["Connect", "Transaction", "WriteRace", "Writer", "lazy_reads"]

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


@contextmanager
def _races_named() -> Iterator[None]:
    """Around a transaction: a unique-key violation, at a statement or at commit, raised as
    ``WriteRace``."""
    try:
        yield
    except IntegrityError as err:  # a unique key another writer took: a race, not a fault
        raise WriteRace(str(err.orig)) from err


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
        (a unique-key race then raises ``WriteRace``)."""
        if not self._keep:
            with _races_named(), self._engine.begin() as pooled:
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
                with _races_named(), conn.begin():
                    yield conn
            except BaseException:
                self._conn = None
                conn.close()
                raise

    @contextmanager
    def fresh(self) -> Iterator[Transaction]:
        """A write transaction on a pooled connection of its own (one proof stored again on
        fresh reads), with the same ``WriteRace``."""
        with _races_named(), self._engine.begin() as conn:
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
