"""The hub's anomaly list: an index of accepted micro-proofs that report anomalous rows.

The event itself is the signed micro-proof (its anomaly summary and model hash are covered
by the device's signature); ``AnomalyBook.record`` runs inside the transaction that stores
the proof, so the list can never disagree with what was accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from cloud_sync.storage.repository import Accepted
from cloud_sync.storage.tables import anomaly_events

__all__ = ["AnomalyBook"]

_INSERT = insert(anomaly_events)


@dataclass
class AnomalyBook:
    engine: Engine

    def record(self, batch: Sequence[Accepted], conn: Connection, now_ns: int) -> None:
        """Index the anomalies the accepted proofs report (inside their transaction)."""
        rows = [
            {
                "utid": a.row.utid,
                "window": a.row.window,
                "first_ts_ns": mp.first_ts_ns,
                "last_ts_ns": mp.last_ts_ns,
                "count": mp.anomaly.count,
                "max_score": mp.anomaly.max_score,
                "threshold": mp.anomaly.threshold,
                "model_id": mp.model.id if mp.model else None,
                "model_sha256": mp.model.sha256 if mp.model else None,
                "received_ns": now_ns,
            }
            for a in batch
            if (mp := a.proof).anomaly is not None and mp.anomaly.count
        ]
        if rows:
            conn.execute(_INSERT, rows)

    def recent(self, *, utid: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(anomaly_events).order_by(anomaly_events.c.received_ns.desc()).limit(limit)
        if utid is not None:
            q = q.where(anomaly_events.c.utid == utid)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [
            {
                "utid": r.utid,
                "window": r.window,
                "first_ts_ns": r.first_ts_ns,
                "last_ts_ns": r.last_ts_ns,
                "anomalous_rows": r.count,
                "max_score": r.max_score,
                "threshold": r.threshold,
                "model_id": r.model_id,
                "model_sha256": r.model_sha256.hex() if r.model_sha256 else None,
            }
            for r in rows
        ]
