"""The agent's storage policy, stated and signed by the device key.

The spool's disk cap and what gets dropped when it is reached are part of what a reading's
owner relies on ("raw readings of windows the hub acknowledged may be shed, then their
micro-proofs, never anything unacknowledged"). The agent states its policy in this small
COSE_Sign1 document, signed with the same key as its micro-proofs, and sends it to the hub,
which checks it against the enrolled key and shows it next to the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from attestation import cborsafe, cose
from attestation.errors import MalformedInput
from attestation.signers.base import Signer
from attestation.utid import utid_bytes

__all__ = ["CONTENT_TYPE", "ShedPolicyStatement", "parse_policy", "sign_policy"]

CONTENT_TYPE = "application/factoryops-policy+cbor"
SHEDS = (
    "raw readings of windows the hub acknowledged, oldest first; if still over the cap, the"
    " micro-proofs of windows the hub acknowledged, oldest first (the hub keeps them)"
)
NEVER = (
    "micro-proofs and readings the hub has not acknowledged, and the newest micro-proof"
    " it acknowledged"
)
ON_DISK_FULL = "keep the signed window in memory and retry; a stop records a signed gap"


@dataclass(frozen=True, slots=True)
class ShedPolicyStatement:
    disk_cap_bytes: int
    low_water: float  # shedding brings usage down to this share of the cap
    sheds: str = SHEDS
    never: str = NEVER
    on_disk_full: str = ON_DISK_FULL
    version: int = 1

    def as_map(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "disk_cap_bytes": self.disk_cap_bytes,
            "low_water": self.low_water,
            "sheds": self.sheds,
            "never": self.never,
            "on_disk_full": self.on_disk_full,
        }


def sign_policy(policy: ShedPolicyStatement, signer: Signer, *, iat: int) -> bytes:
    payload = cborsafe.dumps({**policy.as_map(), "iat": iat})
    kid = utid_bytes(signer.public_key_der())
    return cose.sign1(
        payload, signer, protected={cose.HDR_CONTENT_TYPE: CONTENT_TYPE, cose.HDR_KID: kid}
    )


def parse_policy(data: bytes, key: cose.PublicKey) -> dict[str, Any]:
    """Verify a signed policy with the device's key; its fields. Raises on any fault."""
    msg = cose.decode_sign1(data, require_tag=True)
    if msg.protected.get(cose.HDR_CONTENT_TYPE) != CONTENT_TYPE:
        raise MalformedInput("policy", f"content type is not {CONTENT_TYPE}")
    cose.verify_sign1(msg, key)
    try:
        doc = cborsafe.loads(msg.payload or b"")
    except cbor2.CBORDecodeError as err:
        raise MalformedInput("policy", f"payload is not CBOR: {err}") from err
    need = {"v", "disk_cap_bytes", "low_water", "sheds", "never", "on_disk_full", "iat"}
    if not isinstance(doc, dict) or set(doc) != need:
        raise MalformedInput("policy", f"expected the keys {sorted(need)}")
    return doc
