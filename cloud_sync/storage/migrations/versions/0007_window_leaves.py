"""window leaves: one row of signed leaves a window instead of one row a reading

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:15:00

Existing readings are re-encoded into their leaves (the deterministic encoding is unique,
so the bytes are the ones the device signed) and moved window by window. ADR 0007.
"""

from __future__ import annotations

import cbor2
import sqlalchemy as sa
from alembic import op

from attestation.reading import Reading, decode_leaf, encode_leaf

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_readings = sa.table(
    "readings",
    sa.column("utid", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("window", sa.BigInteger),
    sa.column("ts_ns", sa.BigInteger),
    sa.column("signal", sa.String),
    sa.column("value", sa.Float),
    sa.column("unit", sa.String),
    sa.column("quality", sa.BigInteger),
)
_window_leaves = sa.table(
    "window_leaves",
    sa.column("utid", sa.String),
    sa.column("window", sa.BigInteger),
    sa.column("leaves", sa.LargeBinary),
)


def upgrade() -> None:
    op.create_table(
        "window_leaves",
        sa.Column("utid", sa.String(length=69), nullable=False),
        sa.Column("window", sa.BigInteger(), nullable=False),
        sa.Column("leaves", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("utid", "window"),
    )
    conn = op.get_bind()
    if "readings" not in sa.inspect(conn).get_table_names():
        return  # nothing to move (a database stamped at an old revision without it)
    r = _readings.c
    rows = conn.execute(
        sa.select(r.utid, r.window, r.seq, r.ts_ns, r.signal, r.value, r.unit, r.quality).order_by(
            r.utid, r.window, r.seq
        )
    )
    key: tuple[str, int] | None = None
    leaves: list[bytes] = []

    def flush() -> None:
        if key is not None and leaves:
            conn.execute(
                _window_leaves.insert().values(
                    utid=key[0], window=key[1], leaves=cbor2.dumps(leaves)
                )
            )

    for utid, window, *fields in rows:
        if (utid, window) != key:
            flush()
            key, leaves = (utid, window), []
        leaves.append(encode_leaf(Reading(*fields)))
    flush()
    with op.batch_alter_table("readings", schema=None) as batch_op:
        batch_op.drop_index("ix_readings_utid_window")
    op.drop_table("readings")


def downgrade() -> None:
    op.create_table(
        "readings",
        sa.Column("utid", sa.String(length=69), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("window", sa.BigInteger(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("signal", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("quality", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("utid", "seq"),
    )
    with op.batch_alter_table("readings", schema=None) as batch_op:
        batch_op.create_index("ix_readings_utid_window", ["utid", "window"], unique=False)
    conn = op.get_bind()
    w = _window_leaves.c
    for utid, window, blob in conn.execute(sa.select(w.utid, w.window, w.leaves)):
        rows = [decode_leaf(leaf) for leaf in cbor2.loads(blob)]
        conn.execute(
            _readings.insert(),
            [{"utid": utid, "window": window, **r.as_dict()} for r in rows],
        )
    op.drop_table("window_leaves")
