"""Errors of the hub: one root, and the API error that becomes a 4xx JSON answer.

``ApiError`` carries the HTTP status, a stable ``code`` and a ``detail`` naming what was
wrong; the app's exception handler renders it as ``{"error", "detail", ...}``.
"""

from __future__ import annotations

from typing import Any

from attestation.errors import Fixable

__all__ = ["ApiError", "HubError"]


class HubError(Fixable):
    """Root of every error raised by ``cloud_sync``."""


class ApiError(HubError):
    """A refusal the client caused; never a 5xx."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}
