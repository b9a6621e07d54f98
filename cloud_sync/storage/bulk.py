"""INSERTs of many rows on the ingest path, straight to SQLite's DB-API cursor.

Each group commit inserts a row a proof into ``windows`` and ``window_leaves`` and a row an
entry into the log's tables. Through SQLAlchemy Core every row costs a parameter dictionary,
bind processing and ``construct_params`` before sqlite3 sees it; measured on the hub's
ingest, that was ~8 % of its CPU a proof (docs/performance.md, 2026-12-03 later). On SQLite
``BulkInsert`` hands tuples in the table's column order to ``cursor.executemany`` on the
connection's own DB-API connection, inside the transaction SQLAlchemy began, and turns a
driver error into SQLAlchemy's (an ``IntegrityError`` stays one: the ingest's race handling
catches it). Other databases go through Core as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

__all__ = ["BulkInsert"]


class BulkInsert:
    """``INSERT INTO table`` of whole rows, given as tuples in the table's column order."""

    def __init__(self, table: Table) -> None:
        self._core = insert(table)
        compiled = self._core.compile(dialect=sqlite.dialect())  # every column, qmark style
        self._sqlite = str(compiled)
        self.columns: tuple[str, ...] = tuple(compiled.positiontup or ())
        if self.columns != tuple(c.name for c in table.columns):
            raise RuntimeError(f"{self._sqlite!r} does not list {table.name}'s columns in order")

    def __call__(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if conn.dialect.name != "sqlite":
            conn.execute(self._core, [dict(zip(self.columns, r, strict=True)) for r in rows])
            return
        dbapi = conn.connection.driver_connection
        if dbapi is None:  # a connection SQLAlchemy has already closed: say so its way
            conn.execute(self._core, [dict(zip(self.columns, r, strict=True)) for r in rows])
            return
        cursor = dbapi.cursor()
        try:
            cursor.executemany(self._sqlite, rows)
        except conn.dialect.loaded_dbapi.Error as err:
            raise DBAPIError.instance(
                self._sqlite, None, err, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
            ) from err
        finally:
            cursor.close()
