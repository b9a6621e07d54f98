"""window leaves stored back to back (a CBOR sequence) instead of as a CBOR array

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:40:00

Uploads carry a window's leaves back to back in one byte string and the hub stores those
bytes as they arrived (ADR 0008). The leaves themselves are unchanged: each array becomes
its items concatenated, page by page.
"""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import sqlalchemy as sa
from alembic import op

from attestation.leafbatch import split_leaves

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_window_leaves = sa.table(
    "window_leaves",
    sa.column("utid", sa.String),
    sa.column("window", sa.BigInteger),
    sa.column("leaves", sa.LargeBinary),
)
_PAGE = 500


def _rewrite(convert: Callable[[bytes], bytes]) -> None:
    conn = op.get_bind()
    w = _window_leaves.c
    after: tuple[str, int] = ("", -1)
    while True:
        page = conn.execute(
            sa.select(w.utid, w.window, w.leaves)
            .where(sa.tuple_(w.utid, w.window) > sa.tuple_(*after))
            .order_by(w.utid, w.window)
            .limit(_PAGE)
        ).all()
        for utid, window, blob in page:
            conn.execute(
                _window_leaves.update()
                .where(w.utid == utid, w.window == window)
                .values(leaves=convert(bytes(blob)))
            )
        if len(page) < _PAGE:
            return
        after = (page[-1][0], page[-1][1])


def upgrade() -> None:
    _rewrite(lambda blob: b"".join(cbor2.loads(blob)))


def downgrade() -> None:
    _rewrite(lambda blob: cbor2.dumps(split_leaves(blob)))
