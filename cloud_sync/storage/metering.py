"""Repository of metering and device statements: usage per site and day (counted from the
accepted windows), signed monthly statements, webhook deliveries and devices' signed
storage policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from cloud_sync.storage.tables import (
    device_policies,
    devices,
    statements,
    webhook_deliveries,
    windows,
)

__all__ = ["DAY_NS", "MeteringRepo", "PolicyRepo"]

DAY_NS = 86_400 * 10**9


@dataclass(frozen=True, slots=True)
class MeteringRepo:
    engine: Engine

    def usage_by_day(self, site: str, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(UTC day number, proofs, readings) accepted in [lo, hi) for the site's devices."""
        day = windows.c.received_ns // DAY_NS  # integer division: the UTC day number
        readings = func.sum(windows.c.count).label("readings")
        q = (
            select(day.label("day"), func.count().label("proofs"), readings)
            .join(devices, devices.c.utid == windows.c.utid)
            .where(devices.c.site == site, windows.c.received_ns >= lo, windows.c.received_ns < hi)
            .group_by(day)
            .order_by(day)
        )  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [(int(r.day), int(r.proofs), int(r.readings or 0)) for r in rows]

    def statement(self, site: str, month: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(statements.c.note).where(
                    statements.c.site == site, statements.c.month == month
                )
            ).first()
        return str(row.note) if row else None

    def add_statement(self, site: str, month: str, note: str, now: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(statements).values(site=site, month=month, note=note, created_ns=now)
            )

    # webhook deliveries ----------------------------------------------------------------------
    def add_delivery(self, event: str, body: str, now: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(webhook_deliveries).values(
                    event=event, body=body, attempts=0, status="pending", next_ns=now,
                    last_error="",
                )
            )  # fmt: skip

    def deliveries(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def next_due(self) -> Any:
        """The pending delivery due first, or None."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(webhook_deliveries)
                .where(webhook_deliveries.c.status == "pending")
                .order_by(webhook_deliveries.c.next_ns)
                .limit(1)
            ).first()

    def record_attempt(
        self, delivery: int, attempts: int, status: str, next_ns: int, error: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery)
                .values(attempts=attempts, status=status, next_ns=next_ns, last_error=error)
            )


@dataclass(frozen=True, slots=True)
class PolicyRepo:
    engine: Engine

    def put(self, utid: str, cose: bytes, now: int) -> None:
        """The device's policy, replacing the one before."""
        with self.engine.begin() as conn:
            conn.execute(delete(device_policies).where(device_policies.c.utid == utid))
            conn.execute(insert(device_policies).values(utid=utid, cose=cose, received_ns=now))

    def get(self, utid: str) -> tuple[bytes, int] | None:
        """(COSE bytes, received_ns) of the device's policy."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(device_policies.c.cose, device_policies.c.received_ns).where(
                    device_policies.c.utid == utid
                )
            ).first()
        return None if row is None else (bytes(row.cose), int(row.received_ns))
