"""Schema migrations with Alembic, run by the hub at start (and by ``hub migrate``).

Several hub replicas may start at once on one PostgreSQL: the upgrade runs in one
transaction under an advisory lock (PostgreSQL DDL is transactional), so exactly one
replica migrates and the others find the schema current. A database made before
migrations existed (tables but no ``alembic_version``) is brought up to the first
revision's tables and stamped, then upgraded like any other.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from cloud_sync.storage.tables import metadata

__all__ = [
    "BASELINE",
    "alembic_config",
    "current_revision",
    "drop_schema",
    "ensure_pg_schema",
    "migrate",
    "migrate_url",
]

BASELINE = "0001"  # the schema as the first hubs created it with metadata.create_all
_BASELINE_TABLES = (  # what revision 0001 creates (later revisions add the rest)
    "devices",
    "windows",
    "readings",
    "log_entries",
    "log_checkpoints",
    "enrollment_tokens",
    "enrollments",
    "device_challenges",
    "device_tokens",
)
_HERE = Path(__file__).parent / "migrations"
_LOCK = 0x466F_4D69  # pg advisory lock id ("FoMi")


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _sqlite_ddl_in_the_transaction(conn: Connection) -> Iterator[None]:
    """On SQLite, make the upgrade one transaction, its DDL included.

    pysqlite opens a transaction only before an INSERT, UPDATE or DELETE, so a revision's
    ``CREATE TABLE`` ran on its own: a hub killed while revision 0013 rebuilt ``windows``
    left ``_alembic_tmp_windows`` behind and then could not start ("table already exists";
    3 of 4 kills here). With pysqlite's own handling off (``isolation_level = None``, set
    before any statement: on an open transaction it would commit it) and an explicit
    ``BEGIN IMMEDIATE``, the connection's commit or rollback ends all of it."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw: Any = conn.connection.dbapi_connection
    before = raw.isolation_level
    raw.isolation_level = None
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield
    finally:
        raw.isolation_level = before  # back to pysqlite's handling: commits nothing


def migrate(engine: Engine) -> None:
    """Bring the database to the newest revision (idempotent, safe to race, all or none)."""
    with engine.begin() as conn, _sqlite_ddl_in_the_transaction(conn):
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        tables = set(inspect(conn).get_table_names())
        cfg = alembic_config(conn)
        if "devices" in tables and "alembic_version" not in tables:
            # made by create_all before migrations: add what the baseline has, then stamp
            # (``readings`` left the schema in 0007; a hub that old always had it)
            baseline = [metadata.tables[t] for t in _BASELINE_TABLES if t in metadata.tables]
            metadata.create_all(conn, tables=baseline)
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")


def migrate_url(url: str) -> str | None:
    """``migrate`` the database at ``url`` on an engine of its own; its revision after."""
    engine = create_engine(url)
    try:
        migrate(engine)
        return current_revision(engine)
    finally:
        engine.dispose()


def ensure_pg_schema(url: str, schema: str) -> None:
    """Create a PostgreSQL schema beside the hub's tables if it is missing (Optuna's)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()


def drop_schema(engine: Engine) -> None:
    """Drop every hub table and the migration record (tests and benchmarks only)."""
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS readings"))  # left the schema in 0007
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


def main(argv: list[str]) -> None:
    """Developer entry: ``revision -m MSG`` autogenerates against a scratch SQLite."""
    if len(argv) >= 3 and argv[0] == "revision" and argv[1] == "-m":
        engine = create_engine("sqlite://")
        with engine.begin() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "head")
            command.revision(cfg, message=argv[2], autogenerate=True)
        return
    raise SystemExit('usage: python -m cloud_sync.storage.migrate revision -m "message"')


if __name__ == "__main__":
    main(sys.argv[1:])
