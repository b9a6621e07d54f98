"""source gaps: an index of the silent sources the accepted proofs state (payload key 16)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 07:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_gaps",
        sa.Column("utid", sa.String(length=69), nullable=False),
        sa.Column("window", sa.BigInteger(), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("first_ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("last_ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("received_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("utid", "window", "idx"),
    )
    with op.batch_alter_table("source_gaps", schema=None) as batch_op:
        batch_op.create_index("ix_source_gaps_received", ["received_ns"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("source_gaps", schema=None) as batch_op:
        batch_op.drop_index("ix_source_gaps_received")
    op.drop_table("source_gaps")
