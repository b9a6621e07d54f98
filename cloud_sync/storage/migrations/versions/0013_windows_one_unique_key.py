"""windows keep one unique key, (utid, window) (ADR 0052)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 03:30:00

The unique indexes on ``cose_sha256`` and on (utid, prev) go. Neither refused anything the
primary key does not: a stored window chains onto the one before it (window = head + 1,
prev = the head's hash), so the same bytes or the same prev mean the same (utid, window).
Each cost a random-key index page a proof in every commit (a hash, a 101-byte key): SQLite
WAL-wrote and checkpointed them again. 20,000 devices, 60 proofs a commit, SQLite in WAL
with 16 KiB pages on this VM: 181-182 -> 121-136 µs of CPU a proof stored
(docs/performance.md).

SQLite cannot drop a table's constraint: the table is rebuilt (its rows copied once, a few
seconds a million windows). PostgreSQL drops the two constraints in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_PG_HASH_KEY = "windows_cose_sha256_key"  # PostgreSQL's name for UNIQUE (cose_sha256)
_PREV_KEY = "uq_windows_utid_prev"


def _windows(*constraints: sa.Constraint) -> sa.Table:
    """``windows`` as it stands (reflected), its unique keys replaced by ``constraints``."""
    table = sa.Table("windows", sa.MetaData(), autoload_with=op.get_bind())
    for key in [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)]:
        table.constraints.remove(key)
    for constraint in constraints:
        table.append_constraint(constraint)
    return table


def _unique_keys() -> int:
    """How many unique constraints ``windows`` has now (a hub whose tables were made from
    today's metadata before it was stamped has none)."""
    return len(sa.inspect(op.get_bind()).get_unique_constraints("windows"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE windows DROP CONSTRAINT IF EXISTS {_PG_HASH_KEY}")
        op.execute(f"ALTER TABLE windows DROP CONSTRAINT IF EXISTS {_PREV_KEY}")
        return
    if _unique_keys():
        with op.batch_alter_table("windows", copy_from=_windows(), recreate="always"):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint(_PG_HASH_KEY, "windows", ["cose_sha256"])
        op.create_unique_constraint(_PREV_KEY, "windows", ["utid", "prev"])
        return
    old = _windows(
        sa.UniqueConstraint("cose_sha256"), sa.UniqueConstraint("utid", "prev", name=_PREV_KEY)
    )
    with op.batch_alter_table("windows", copy_from=old, recreate="always"):
        pass
