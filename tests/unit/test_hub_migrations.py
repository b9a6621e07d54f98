"""Alembic migrations: they build exactly the schema tables.py declares, on SQLite and on
PostgreSQL, bring a pre-migration database in, and are safe to run twice or concurrently.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cbor2
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    MetaData,
    String,
    Table,
    create_engine,
    inspect,
    select,
    text,
)

from benchmarks.fleetload import device_values, window_values
from cloud_sync.storage import Store
from cloud_sync.storage.migrate import BASELINE, current_revision, migrate
from cloud_sync.storage.tables import (
    devices,
    log_checkpoints,
    log_entries,
    metadata,
    window_leaves,
    windows,
)
from tests.hubkit import Device


def _drift(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))


def _head() -> str:
    from alembic.script import ScriptDirectory

    from cloud_sync.storage.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_migrations_build_exactly_the_declared_schema_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    assert _drift(engine) == []  # a table change without a migration fails here
    assert current_revision(engine) == _head()
    migrate(engine)  # twice is a no-op
    assert current_revision(engine) == _head()


# one row a reading, as hubs stored them before revision 0007
_OLD_READINGS = Table(
    "readings",
    MetaData(),
    Column("utid", String(69), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("window", BigInteger, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Column("signal", String(128), nullable=False),
    Column("value", Float, nullable=False),
    Column("unit", String(32), nullable=False),
    Column("quality", BigInteger, nullable=False),
    Index("ix_readings_utid_window", "utid", "window"),
)


def test_a_database_from_before_migrations_is_brought_in(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old_tables = [devices, windows, log_entries, log_checkpoints]
    metadata.create_all(engine, tables=old_tables)  # what the first hubs made
    _OLD_READINGS.create(engine)
    _, signed_leaves, rs = Device().window(7)
    with engine.begin() as conn:
        conn.execute(
            _OLD_READINGS.insert(),
            [{"utid": "utid:" + "0" * 64, "window": 0, **r.as_dict()} for r in rs],
        )
        conn.execute(devices.insert().values(device_values("utid:" + "0" * 64, "old")))
        # the window those readings were accepted in (receipts find leaves through it)
        conn.execute(
            windows.insert().values(window_values("utid:" + "0" * 64, 0, b"c", bytes(32), count=7))
        )
    store = Store.open(str(engine.url))
    assert [d.name for d in store.list_devices()] == ["old"]  # data kept
    # readings moved into their window's leaves: exactly the bytes the device signed
    assert store.leaves_of_window("utid:" + "0" * 64, 0) == signed_leaves
    assert _drift(store.engine) == []
    assert current_revision(store.engine) == _head()
    store.close()


def test_0008_stores_leaves_back_to_back_and_downgrades(tmp_path: Path) -> None:
    """Revision 0008 turns every stored CBOR array of leaves into the leaves back to back,
    page by page (1,203 windows: three pages), and its downgrade turns them back."""
    from alembic import command

    from cloud_sync.storage.migrate import alembic_config

    engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    _, signed_leaves, _ = Device().window(3)
    rows = [
        {"utid": f"utid:{u:064x}", "window": w, "leaves": cbor2.dumps(signed_leaves[: 1 + w % 3])}
        for u in range(3)
        for w in range(401)
    ]
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0007")
        conn.execute(window_leaves.insert(), rows)
        command.upgrade(alembic_config(conn), "0008")
        stored = {(r.utid, r.window): r.leaves for r in conn.execute(window_leaves.select())}
        assert stored == {
            (r["utid"], r["window"]): b"".join(signed_leaves[: 1 + r["window"] % 3]) for r in rows
        }
        command.downgrade(alembic_config(conn), "0007")
        back = {(r.utid, r.window): r.leaves for r in conn.execute(window_leaves.select())}
        assert back == {(r["utid"], r["window"]): r["leaves"] for r in rows}
    engine.dispose()


def test_0013_leaves_windows_one_unique_key_and_keeps_every_row(tmp_path: Path) -> None:
    """Revision 0013 rebuilds ``windows`` on SQLite without its unique keys on the COSE hash
    and on (utid, prev), every row kept; its downgrade puts them back."""
    from alembic import command

    from cloud_sync.storage.migrate import alembic_config

    engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    rows = [
        window_values(f"utid:{u:064x}", w, b"cose-%d-%d" % (u, w), bytes([u, w]) * 16, count=10)
        for u in range(3)
        for w in range(50)
    ]

    def state(conn: Connection) -> tuple[int, list[dict[str, object]]]:
        """(unique constraints of ``windows``, its rows in key order)."""
        keys = len(inspect(conn).get_unique_constraints("windows"))
        # the columns 0012 had (``windows`` is today's table)
        then = select(*(windows.c[k] for k in rows[0]))
        stored = conn.execute(then.order_by(windows.c.utid, windows.c.window))
        return keys, [dict(r._mapping) for r in stored]

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0012")
        conn.execute(
            devices.insert(),
            [device_values(f"utid:{u:064x}", f"d{u}", head_window=49) for u in range(3)],
        )
        conn.execute(windows.insert(), rows)
        assert state(conn) == (2, rows)
        command.upgrade(alembic_config(conn), "0013")
        assert state(conn) == (0, rows)
        found = inspect(conn)
        assert [i["name"] for i in found.get_indexes("windows")] == ["ix_windows_utid_last_seq"]
        assert found.get_pk_constraint("windows")["constrained_columns"] == ["utid", "window"]
        assert [k["referred_table"] for k in found.get_foreign_keys("windows")] == ["devices"]
        command.downgrade(alembic_config(conn), "0012")
        assert state(conn) == (2, rows)
    engine.dispose()


def test_replicas_migrating_at_once_on_postgresql_make_one_schema(postgres_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        engine = create_engine(postgres_url)
        try:
            migrate(engine)
        except Exception as err:  # noqa: BLE001 - collected for the assertion below
            errors.append(err)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = create_engine(postgres_url)
    assert _drift(engine) == []
    assert current_revision(engine) == _head()
    assert _head() >= BASELINE
    assert "enrollment_tokens" in inspect(engine).get_table_names()
    engine.dispose()


def test_window_leaves_are_compressed_with_lz4_on_postgresql(postgres_url: str) -> None:
    """pglz cost ~2 ms of the server's CPU a 28 KB window of leaves, lz4 ~0.18 ms
    (migration 0012, docs/performance.md); a leaves row still reads back exactly."""
    store = Store.open(postgres_url)
    try:
        with store.engine.begin() as conn:
            how = conn.execute(
                text(
                    "SELECT attcompression, attstorage FROM pg_attribute"
                    " WHERE attrelid = 'window_leaves'::regclass AND attname = 'leaves'"
                )
            ).one()
            assert how in (("l", "x"), ("", "e"))  # lz4, or stored uncompressed without it
            leaves = bytes(range(256)) * 120  # past the TOAST threshold
            conn.execute(window_leaves.insert().values(utid="utid:x", window=0, leaves=leaves))
            assert conn.execute(window_leaves.select()).one().leaves == leaves
    finally:
        store.close()


def test_a_new_sqlite_file_gets_4k_pages_and_an_existing_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    """4 KiB pages are chosen for new files (cloud_sync/storage/repository.py); SQLite
    cannot change the page size of a file in WAL mode, and a hub must still open one made
    with 16 KiB pages (by the versions of 2026-12-05/06) and migrate it."""
    import sqlite3

    from cloud_sync.storage.repository import SQLITE_PAGE_SIZE

    def page_size(store: Store) -> int:
        with store.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())

    new = Store.open(f"sqlite:///{tmp_path / 'new.db'}")
    assert page_size(new) == SQLITE_PAGE_SIZE == 4096
    new.close()
    with sqlite3.connect(tmp_path / "old.db") as db:  # an earlier hub's file: 16 KiB, WAL
        db.execute("PRAGMA page_size=16384")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE unrelated (x INTEGER)")
    old = Store.open(f"sqlite:///{tmp_path / 'old.db'}")
    assert page_size(old) == 16384
    assert old.counts() == {"devices": 0, "windows": 0, "readings": 0}
    old.close()
