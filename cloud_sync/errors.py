"""Errors of the hub: one root, the refusal that becomes a 4xx answer, the fault a 5xx.

``ApiError`` carries the HTTP status, a stable ``code`` and a ``detail`` naming what was
wrong with the request; the app's exception handler renders it as ``{"error", "detail",
...}``. ``HubFault`` is the hub's own failure (a damaged store, a missing extra): a 5xx,
answered with a request id and logged with its traceback. Any other exception is answered
the same way as ``internal``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from attestation.errors import Fixable

__all__ = ["ApiError", "HubError", "HubFault"]


class HubError(Fixable):
    """Root of every error raised by ``cloud_sync``."""


class _Answer(HubError):
    """An error the app answers with ``status`` (within ``statuses``) and a stable ``code``."""

    statuses: ClassVar[range]
    otherwise: ClassVar[str]  # what to raise for a status outside ``statuses``

    def __init__(self, status: int, code: str, detail: str) -> None:
        if status not in self.statuses:
            raise ValueError(f"{type(self).__name__}({status}, {code!r}): {self.otherwise}")
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class ApiError(_Answer):
    """A refusal the client caused; never a 5xx."""

    statuses = range(400, 500)
    otherwise = "a 5xx is the hub's own failure, raise HubFault"

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(status, code, detail)
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class HubFault(_Answer):
    """A failure of the hub itself, answered with a 5xx: ``detail`` may be shown to the
    client; the traceback goes to the hub's log under the answer's request id."""

    statuses = range(500, 600)
    otherwise = "a 4xx is a refusal of the client's request, raise ApiError"
