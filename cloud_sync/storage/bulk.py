"""The ingest's hot statements on SQLite, straight to the DB-API cursor.

Each group commit inserts a row a proof into ``windows`` (and one into ``window_leaves``,
except on a SQLite file, whose leaves go to its leaves file: ADR 0053) and a row an entry
into the log's tables, moves the devices' chain heads and reads the log's size and a few
tree nodes. Through SQLAlchemy Core every execution builds an execution context and
every row a parameter dictionary, bind processing and ``construct_params`` before sqlite3
sees it; measured on the hub's ingest that was ~10 % of its CPU a proof (docs/performance.md,
2026-12-03 later). On SQLite these statements are compiled once and run on the
connection's own DB-API connection, inside the transaction SQLAlchemy began; a driver error
becomes SQLAlchemy's (an ``IntegrityError`` stays one: the ingest's race handling catches
it). On PostgreSQL (psycopg) the inserts are one ``COPY ... FROM STDIN (FORMAT BINARY)`` a
table a group, in the same transaction: psycopg's ``executemany`` sends a Bind and an Execute
a row, each a pass of its Python protocol code in the hub and of the executor in the
server, where COPY streams rows its C code packs and the server appends without planning
(docs/performance.md, 2026-12-06, late night). Other statements and databases run through Core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Insert, Select, Table, Update, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.exc import DBAPIError

__all__ = ["BulkInsert", "Prepared"]

_SQLITE = sqlite.dialect()
_POSTGRESQL = PGDialect()  # type: ignore[no-untyped-call]  # its __init__ has no annotations


class Prepared:
    """A Core statement with named bind parameters; run as ``executemany`` (a row count)
    or for one value (``scalar``)."""

    def __init__(self, statement: Insert | Update | Select[Any]) -> None:
        self.core = statement
        compiled = statement.compile(dialect=_SQLITE)  # qmark: parameters by position
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self._fixed = compiled.params  # values the statement carries (literals made binds)

    def _values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params[n] if n in params else self._fixed[n] for n in self.names)

    def _run(self, conn: Connection, rows: Sequence[tuple[Any, ...]], many: bool) -> Any:
        dbapi = conn.connection.driver_connection
        cursor = dbapi.cursor()  # type: ignore[union-attr]  # an open connection has one
        try:
            if many:
                cursor.executemany(self.sql, rows)
                return cursor.rowcount
            row = cursor.execute(self.sql, rows[0]).fetchone()
            return None if row is None else row[0]
        except conn.dialect.loaded_dbapi.Error as err:
            raise DBAPIError.instance(
                self.sql, None, err, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
            ) from err
        finally:
            cursor.close()

    def rowcount(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run once a row of parameters; the rows the statement changed in all."""
        if conn.dialect.name != "sqlite":
            return int(conn.execute(self.core, list(rows)).rowcount)
        return int(self._run(conn, [self._values(r) for r in rows], many=True))

    def scalar(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None without a row."""
        if conn.dialect.name != "sqlite":
            return conn.execute(self.core, dict(params or {})).scalar()
        return self._run(conn, [self._values(params or {})], many=False)


class BulkInsert(Prepared):
    """``INSERT INTO table`` of whole rows, given as tuples in the table's column order."""

    def __init__(self, table: Table) -> None:
        super().__init__(insert(table))  # every column
        self.columns = self.names
        if self.columns != tuple(c.name for c in table.columns):
            raise RuntimeError(f"{self.sql!r} does not list {table.name}'s columns in order")
        quote = _POSTGRESQL.identifier_preparer
        listed = ", ".join(quote.quote(c) for c in self.columns)
        self.copy_sql = f"COPY {quote.format_table(table)} ({listed}) FROM STDIN (FORMAT BINARY)"
        # binary COPY sends each value in its column's own format: psycopg must be told them
        self.pg_types = [_pg_type(c.type.compile(dialect=_POSTGRESQL)) for c in table.columns]

    def __call__(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if conn.dialect.name == "sqlite":
            self._run(conn, rows, many=True)
        elif conn.dialect.driver == "psycopg":
            self._copy(conn, rows)
        else:
            conn.execute(self.core, [dict(zip(self.columns, r, strict=True)) for r in rows])

    def _copy(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        dbapi = conn.connection.driver_connection
        try:
            with dbapi.cursor() as cursor, cursor.copy(self.copy_sql) as copy:  # type: ignore[union-attr]  # an open connection has one
                copy.set_types(self.pg_types)
                for row in rows:
                    copy.write_row(row)
        except conn.dialect.loaded_dbapi.Error as err:
            raise DBAPIError.instance(
                self.copy_sql, None, err, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
            ) from err


def _pg_type(compiled: str) -> str:
    """psycopg's name for a column type as PostgreSQL's DDL spells it: ``VARCHAR(69)`` ->
    ``varchar``, ``BIGINT`` -> ``bigint``."""
    return re.sub(r"\(.*\)", "", compiled).strip().lower()
