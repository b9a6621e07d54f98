"""What a device signs to authenticate to the hub (challenge -> short-lived token), and to
move to a new key (key rotation).

Shared by the device (signs) and the hub (verifies); each context string keeps a signature
from ever being mistaken for a micro-proof signature or anything else.
"""

from __future__ import annotations

__all__ = ["AUTH_CONTEXT", "ROTATION_CONTEXT", "auth_message", "rotation_message"]

AUTH_CONTEXT = b"factoryops-device-auth-v1\0"
ROTATION_CONTEXT = b"factoryops-key-rotation-v1\0"


def auth_message(utid: str, challenge: bytes) -> bytes:
    """The bytes the device key signs (ES256) to turn ``challenge`` into a token."""
    return AUTH_CONTEXT + utid.encode("ascii") + b"\0" + challenge


def rotation_message(old_utid: str, new_utid: str, head_window: int, head_hash: bytes) -> bytes:
    """The bytes both keys sign (ES256) to move a device from ``old_utid`` to ``new_utid``.

    The chain head the gateway holds (window and the SHA-256 of its micro-proof, the next
    ``prev``) is bound in, so the hub links the new key exactly where the old one stopped;
    a TPM's Certify of the new key uses SHA-256 of these bytes as its qualifying data.
    """
    return (
        ROTATION_CONTEXT
        + old_utid.encode("ascii")
        + b"\0"
        + new_utid.encode("ascii")
        + b"\0"
        + str(head_window).encode("ascii")
        + b"\0"
        + head_hash
    )
