"""What a device signs to authenticate to the hub (challenge -> short-lived token).

Shared by the agent (signs) and the hub (verifies); the context string keeps a challenge
signature from ever being mistaken for a micro-proof signature or anything else.
"""

from __future__ import annotations

__all__ = ["AUTH_CONTEXT", "auth_message"]

AUTH_CONTEXT = b"factoryops-device-auth-v1\0"


def auth_message(utid: str, challenge: bytes) -> bytes:
    """The bytes the device key signs (ES256) to turn ``challenge`` into a token."""
    return AUTH_CONTEXT + utid.encode("ascii") + b"\0" + challenge
