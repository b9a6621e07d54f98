"""window leaves compressed with lz4 on PostgreSQL

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 10:45:00

PostgreSQL compresses a value past ~2 KB before it stores it out of line (TOAST), with pglz
by default. A window's leaves are ~28 KB: pglz spent ~2 ms of a server process's CPU on
each (lz4: ~0.18 ms, no compression: ~0.17 ms; 2,000 rows of real leaves on this VM,
docs/performance.md), more than the hub spends on the whole proof. lz4 (PostgreSQL 14+,
built with --with-lz4 as Debian's and the official images are) keeps them ~1.3x larger
than pglz but ~2x smaller than no compression; a server without lz4 stores them
uncompressed (STORAGE EXTERNAL). Rows already stored keep their compression. SQLite
stores blobs as they are: nothing to do there.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a savepoint: a server without lz4 refuses this alone
            op.execute("ALTER TABLE window_leaves ALTER COLUMN leaves SET COMPRESSION lz4")
    except DBAPIError:
        op.execute("ALTER TABLE window_leaves ALTER COLUMN leaves SET STORAGE EXTERNAL")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE window_leaves ALTER COLUMN leaves SET COMPRESSION pglz")
    op.execute("ALTER TABLE window_leaves ALTER COLUMN leaves SET STORAGE EXTENDED")
