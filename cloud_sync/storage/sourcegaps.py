"""The hub's list of silent sources: an index of the source gaps (payload key 16) that the
accepted micro-proofs state.

The statement itself is the signed micro-proof; ``SourceGapBook.record`` runs inside the
transaction that stores the proof, so the list can never disagree with what was accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from cloud_sync.storage.repository import Accepted
from cloud_sync.storage.tables import source_gaps

__all__ = ["SourceGapBook"]

_INSERT = insert(source_gaps)


@dataclass
class SourceGapBook:
    engine: Engine

    def record(self, batch: Sequence[Accepted], conn: Connection, now_ns: int) -> None:
        """Index the source gaps the accepted proofs state (inside their transaction)."""
        rows = [
            {
                "utid": a.row.utid,
                "window": a.row.window,
                "idx": i,
                "source": g.source,
                "first_ts_ns": g.first_ts_ns,
                "last_ts_ns": g.last_ts_ns,
                "reason": g.reason,
                "received_ns": now_ns,
            }
            for a in batch
            for i, g in enumerate(a.proof.source_gaps)
        ]
        if rows:
            conn.execute(_INSERT, rows)

    def recent(self, *, utid: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest windows first, in key 16's order within a window."""
        t = source_gaps.c
        q = select(source_gaps).order_by(t.received_ns.desc(), t.window.desc(), t.idx).limit(limit)
        if utid is not None:
            q = q.where(t.utid == utid)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [
            {
                "utid": r.utid,
                "window": r.window,
                "source": r.source,
                "first_ts_ns": r.first_ts_ns,
                "last_ts_ns": r.last_ts_ns,
                "reason": r.reason,
            }
            for r in rows
        ]
