"""key rotation: devices name the key they moved to and the key they came from (ADR 0038)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a hub from before migrations gets ``devices`` from today's tables, columns included
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("devices")}
    with op.batch_alter_table("devices") as batch:
        for name in ("rotated_to", "rotated_from"):
            if name not in have:
                batch.add_column(sa.Column(name, sa.String(length=69), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("rotated_from")
        batch.drop_column("rotated_to")
