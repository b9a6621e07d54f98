"""Admission: a bound on the request bodies the hub holds at once, across all requests.

Each route refuses a body past its own limit while it streams in (``read_body``), but that
bounds one request, not the hub: 40 clients each holding a 16 MiB upload with 15 MiB sent
(anyone who can open connections) grew its peak RSS by 600 MiB (ADR 0051). ``BodyBudget`` is
the hub's total. A request is charged
its declared ``Content-Length`` (a chunked one, the largest body any route takes) before the
app sees it, and a zstd upload is charged again what it inflates to; the charge is given
back when the answer has been sent. A request that does not fit is answered at once, before
its body is read, with ``503 overloaded`` and ``Retry-After``; agents send it again later
(uplink.py), and nothing already acknowledged is touched.

One event loop serves every request, so the count needs no lock.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_sync.errors import HubFault

__all__ = ["BodyBudget", "HeldBodies", "Overloaded", "charge", "overloaded_answer"]

_log = logging.getLogger(__name__)
_SCOPE_KEY = "factoryops.charged"  # the scope's running charge, for ``charge`` below
_LOG_EVERY_S = 10.0


class Overloaded(HubFault):
    """The hub holds as many request bodies as its budget allows: try again later."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(503, "overloaded", detail)
        self.retry_after_s = retry_after_s


@dataclass
class BodyBudget:
    """Bytes of request bodies held at once: ``limit`` in all. ``on_refusal`` is called for
    each request refused, at admission or when its body inflated (the metrics' counter)."""

    limit: int
    retry_after_s: int = 2
    on_refusal: Callable[[], None] = lambda: None
    held: int = 0
    refused: int = 0
    _logged_at: float = field(default=0.0, repr=False)

    def take(self, n: int) -> Overloaded | None:
        """Charge ``n`` bytes, or return the refusal (nothing charged) if they do not fit."""
        if self.held + n <= self.limit:
            self.held += n
            return None
        self.refused += 1
        self.on_refusal()
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:  # at most one line a period, with a count
            self._logged_at = now
            _log.warning(
                "overloaded: %d bytes of bodies held, limit %d; %d requests refused so far",
                self.held,
                self.limit,
                self.refused,
            )
        return Overloaded(
            f"the hub holds {self.held} bytes of request bodies (limit {self.limit}); this"
            f" request's {n} do not fit: send it again in {self.retry_after_s} s",
            self.retry_after_s,
        )

    def give(self, n: int) -> None:
        self.held -= n


def charge(scope: Scope, budget: BodyBudget, n: int) -> None:
    """Charge ``n`` more bytes to the request of ``scope`` (what a compressed body inflated
    to); raises ``Overloaded`` if they do not fit. ``HeldBodies`` gives them back with the
    rest."""
    if (refusal := budget.take(n)) is not None:
        raise refusal
    scope[_SCOPE_KEY] = scope.get(_SCOPE_KEY, 0) + n


class HeldBodies:
    """Pure ASGI middleware: each HTTP request charged to ``budget`` for its life, or
    answered ``503 overloaded`` at once when it does not fit. ``unknown_length`` is charged
    for a body sent without ``Content-Length`` (the largest any route accepts)."""

    def __init__(self, app: ASGIApp, budget: BodyBudget, unknown_length: int) -> None:
        self.app = app
        self.budget = budget
        self.unknown_length = unknown_length

    def declared(self, scope: Scope) -> int:
        """What the request is charged: its declared length, at most ``unknown_length`` (a
        length past every route's limit is refused by the route, unread)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                return min(int(value), self.unknown_length)
            if name in (b"content-length", b"transfer-encoding"):  # unreadable, or chunked
                return self.unknown_length
        return 0  # no body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        n = self.declared(scope)
        if (refusal := self.budget.take(n)) is not None:
            await overloaded_answer(refusal)(scope, receive, send)
            return
        scope[_SCOPE_KEY] = n
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.give(scope[_SCOPE_KEY])


def overloaded_answer(refusal: Overloaded, request_id: str | None = None) -> JSONResponse:
    """The 503 of a request the budget refused: the body every fault has (``request_id``
    too) and ``Retry-After``; nothing in the log but ``BodyBudget``'s periodic count."""
    request_id = request_id or secrets.token_hex(8)
    return JSONResponse(
        {"error": refusal.code, "detail": refusal.detail, "request_id": request_id},
        status_code=refusal.status,
        # a body not read is read and dropped by uvicorn, chunk by chunk, after the answer:
        # the client reads its 503 and may send the next request on the same connection
        headers={"retry-after": str(refusal.retry_after_s), "x-request-id": request_id},
    )
