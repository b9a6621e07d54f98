"""Devices' signed storage policies: checked against the device key, the newest kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, delete, insert, select

from attestation.errors import AttestationError
from attestation.policy import parse_policy
from cloud_sync.errors import ApiError
from cloud_sync.storage.tables import device_policies

__all__ = ["DevicePolicies"]


@dataclass
class DevicePolicies:
    engine: Engine

    def accept(self, device: Any, data: bytes, now_ns: int) -> dict[str, Any]:
        key = serialization.load_der_public_key(device.public_key)
        try:
            doc = parse_policy(data, key)  # type: ignore[arg-type]
        except AttestationError as err:
            raise ApiError(422, "bad_policy", f"storage policy: {err}") from err
        with self.engine.begin() as conn:
            conn.execute(delete(device_policies).where(device_policies.c.utid == device.utid))
            conn.execute(
                insert(device_policies).values(utid=device.utid, cose=data, received_ns=now_ns)
            )
        return doc

    def get(self, device: Any) -> dict[str, Any] | None:
        """The device's newest policy, checked again on the way out (None if it sent none)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(device_policies.c.cose, device_policies.c.received_ns).where(
                    device_policies.c.utid == device.utid
                )
            ).first()
        if row is None:
            return None
        key = serialization.load_der_public_key(device.public_key)
        return {**parse_policy(row.cose, key), "received_ns": row.received_ns}  # type: ignore[arg-type]
