"""The newest readings of the agent's spool, read-only: what an update's health check
scores (the running agent owns the spool; WAL lets a reader in beside it)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from attestation.reading import Reading

__all__ = ["recent_readings"]


def recent_readings(spool: Path, limit: int = 2_000) -> list[Reading]:
    """The newest committed readings, oldest first (read-only: the agent owns the spool)."""
    if not spool.exists():
        return []
    with closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT seq, ts_ns, signal, value, unit, quality FROM readings"
            " WHERE typeof(value) = 'real' ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
    return [Reading(*r) for r in reversed(rows)]
