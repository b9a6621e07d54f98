"""Devices' signed storage policies: checked against the device key, the newest kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine

from attestation.errors import AttestationError
from attestation.policy import parse_policy
from cloud_sync.errors import ApiError
from cloud_sync.storage.metering import PolicyRepo

__all__ = ["DevicePolicies"]


@dataclass
class DevicePolicies:
    engine: Engine

    def accept(self, device: Any, data: bytes, now_ns: int) -> dict[str, Any]:
        key = serialization.load_der_public_key(device.public_key)
        try:
            doc = parse_policy(data, key)  # type: ignore[arg-type]  # enrolled keys are P-256 (checked at enrollment); the loader's type is the union of all key types
        except AttestationError as err:
            raise ApiError(422, "bad_policy", f"storage policy: {err}") from err
        PolicyRepo(self.engine).put(device.utid, data, now_ns)
        return doc

    def get(self, device: Any) -> dict[str, Any] | None:
        """The device's newest policy, checked again on the way out (None if it sent none)."""
        stored = PolicyRepo(self.engine).get(device.utid)
        if stored is None:
            return None
        key = serialization.load_der_public_key(device.public_key)
        return {**parse_policy(stored[0], key), "received_ns": stored[1]}  # type: ignore[arg-type]  # enrolled keys are P-256 (checked at enrollment); the loader's type is the union of all key types
