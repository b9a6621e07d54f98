"""where a window's leaves are in a SQLite hub's leaves file (ADR 0053)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 08:30:00

Two nullable columns on ``windows``: the offset and length of the window's leaves in the
append-only file beside a SQLite database (``<database>-leaves``). Windows stored before
keep their ``window_leaves`` row (both columns NULL), and PostgreSQL hubs go on storing
there. Adding a nullable column rewrites no row on either database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a hub whose tables were made from today's metadata before it was stamped has them
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("windows")}
    if "leaves_offset" not in have:
        op.add_column("windows", sa.Column("leaves_offset", sa.BigInteger(), nullable=True))
    if "leaves_length" not in have:
        op.add_column("windows", sa.Column("leaves_length", sa.Integer(), nullable=True))


def downgrade() -> None:
    # leaves stored in the file would be lost to the database: refuse rather than drop
    bind = op.get_bind()
    stored = bind.execute(
        sa.text("SELECT COUNT(*) FROM windows WHERE leaves_offset IS NOT NULL")
    ).scalar_one()
    if stored:
        raise RuntimeError(
            f"{stored} windows keep their leaves in the leaves file; a hub before 0014 could"
            " not read them: not downgrading"
        )
    with op.batch_alter_table("windows") as batch:
        batch.drop_column("leaves_length")
        batch.drop_column("leaves_offset")
