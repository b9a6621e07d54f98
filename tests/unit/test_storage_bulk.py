"""cloud_sync/storage/bulk.py: the ingest's hot statements, on SQLite and PostgreSQL.

On SQLite they bypass SQLAlchemy Core for the DB-API cursor; what comes out must be what Core
would have stored, inside the same transaction, and a duplicate must still surface as
SQLAlchemy's ``IntegrityError`` (the ingest's race handling catches that type only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, bindparam, create_engine, func, select, update
from sqlalchemy.exc import IntegrityError

from cloud_sync.storage.bulk import BulkInsert, Prepared
from cloud_sync.storage.migrate import migrate
from cloud_sync.storage.tables import log_nodes, window_leaves

_ROWS = [(0, 7, b"\x01" * 32), (1, 3, b"\x02" * 32), (0, 8, bytes(32))]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        engine = create_engine(url)  # a fresh database
    else:
        engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _stored(engine: Engine) -> list[tuple[int, int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(select(log_nodes).order_by(log_nodes.c.level, log_nodes.c.idx))
        return [(r.level, r.idx, bytes(r.hash)) for r in rows]


def test_rows_are_stored_as_given_and_committed_with_the_transaction(engine: Engine) -> None:
    insert_nodes = BulkInsert(log_nodes)
    assert insert_nodes.columns == ("level", "idx", "hash")
    with engine.begin() as conn:
        insert_nodes(conn, _ROWS)
        insert_nodes(conn, [])  # nothing to do, no statement
    assert _stored(engine) == sorted(_ROWS)


def test_a_rolled_back_transaction_keeps_none_of_its_rows(engine: Engine) -> None:
    insert_nodes = BulkInsert(log_nodes)

    def insert_then_fail() -> None:
        with engine.begin() as conn:
            insert_nodes(conn, _ROWS)
            raise RuntimeError("abandon the group")

    with pytest.raises(RuntimeError, match="abandon"):
        insert_then_fail()
    assert _stored(engine) == []


def test_a_duplicate_key_is_sqlalchemys_integrity_error_and_nothing_of_it_stays(
    engine: Engine,
) -> None:
    insert_nodes = BulkInsert(log_nodes)
    with engine.begin() as conn:
        insert_nodes(conn, _ROWS[:1])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        insert_nodes(conn, [_ROWS[1], _ROWS[0]])  # the second repeats a stored key
    assert _stored(engine) == [_ROWS[0]]


def test_large_blobs_are_stored_byte_for_byte(engine: Engine) -> None:
    blob = bytes(range(256)) * 120  # a window's leaves are ~28 KiB
    insert_leaves = BulkInsert(window_leaves)
    with engine.begin() as conn:
        insert_leaves(conn, [("utid:" + "ab" * 32, 5, blob)])
    with engine.connect() as conn:
        assert bytes(conn.execute(select(window_leaves.c.leaves)).scalar_one()) == blob


_NODE = Prepared(
    select(log_nodes.c.hash).where(
        log_nodes.c.level == bindparam("l"), log_nodes.c.idx == bindparam("i")
    )
)
_COUNT_PLUS = Prepared(select(func.coalesce(func.max(log_nodes.c.idx), -1) + 1))
_RENAME = Prepared(
    update(log_nodes).where(log_nodes.c.idx == bindparam("old")).values(idx=bindparam("new"))
)


def test_a_prepared_query_answers_as_core_does(engine: Engine) -> None:
    with engine.begin() as conn:
        assert _COUNT_PLUS.scalar(conn) == 0  # a literal of the statement, no parameter
        BulkInsert(log_nodes)(conn, _ROWS)
        assert _COUNT_PLUS.scalar(conn) == 9
        assert bytes(_NODE.scalar(conn, {"l": 1, "i": 3})) == b"\x02" * 32
        assert _NODE.scalar(conn, {"l": 5, "i": 3}) is None  # no row


def test_a_prepared_update_counts_the_rows_it_changed(engine: Engine) -> None:
    with engine.begin() as conn:
        BulkInsert(log_nodes)(conn, _ROWS)
        # idx 7 is at level 0 only; idx 40 is nowhere: one row changes of the two asked
        assert _RENAME.rowcount(conn, [{"old": 7, "new": 17}, {"old": 40, "new": 41}]) == 1
    assert [idx for _, idx, _ in _stored(engine)] == [8, 17, 3]
