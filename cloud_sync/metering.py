"""Metering: accepted proofs and readings per site and day, signed monthly statements, and
webhooks for billing events.

Usage is counted from what the hub accepted (the ``windows`` table), so it can never
disagree with the log. Closing a month makes a **statement**: a C2SP signed note (the same
format and key as the log's checkpoints) that names the site, the month, the counts and the
log checkpoint they rest on; anyone holding the hub's log key can check it offline
(``verify_statement``). Closing a month is a billing event: it is sent to the configured
webhook (``POST`` JSON, ``X-FactoryOps-Signature: sha256=<HMAC of the body>``), retried with
backoff, each attempt recorded so a restart resumes what was not delivered.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import hmac
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine

from attestation.signednote import NoteVerifier, open_note, sign_note
from cloud_sync.errors import ApiError
from cloud_sync.log import HubLog
from cloud_sync.storage.metering import MeteringRepo

__all__ = ["Metering", "Webhooks", "parse_month", "verify_statement"]

log = logging.getLogger(__name__)
STATEMENT_ORIGIN_SUFFIX = "/usage"


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` -> [first ns, end ns) of that UTC month; names the bad parameter."""
    try:
        first = dt.datetime.strptime(text, "%Y-%m").replace(tzinfo=dt.UTC)
    except ValueError as err:
        raise ApiError(422, "invalid_request", f"month: {text[:10]!r} is not YYYY-MM") from err
    if not 1970 <= first.year <= 2261:  # times are stored as int64 Unix nanoseconds
        raise ApiError(422, "invalid_request", f"month: {text!r} is not between 1970 and 2261")
    days = calendar.monthrange(first.year, first.month)[1]
    end = first + dt.timedelta(days=days)
    return int(first.timestamp()) * 10**9, int(end.timestamp()) * 10**9


@dataclass
class Metering:
    engine: Engine
    log: HubLog
    now_ns: Callable[[], int]

    @property
    def _repo(self) -> MeteringRepo:
        return MeteringRepo(self.engine)

    def usage(self, site: str, lo: int, hi: int) -> list[dict[str, Any]]:
        """Per UTC day: proofs and readings accepted for the site's devices."""
        return [
            {
                "date": dt.datetime.fromtimestamp(day * 86_400, dt.UTC).date().isoformat(),
                "proofs": proofs,
                "readings": readings,
            }
            for day, proofs, readings in self._repo.usage_by_day(site, lo, hi)
        ]

    def statement(self, site: str, month: str) -> str | None:
        return self._repo.statement(site, month)

    def close_month(self, site: str, month: str) -> tuple[str, bool]:
        """The month's signed statement, made once (later calls return the same note)."""
        lo, hi = parse_month(month)
        if hi > self.now_ns():
            raise ApiError(409, "month_open", f"month {month} has not ended yet")
        done = self.statement(site, month)
        if done is not None:
            return done, False
        days = self.usage(site, lo, hi)
        cp, _ = self.log.checkpoint()
        origin = self.log.origin + STATEMENT_ORIGIN_SUFFIX
        body = (
            "\n".join(
                [
                    origin,
                    f"site {site}",
                    f"month {month}",
                    f"proofs {sum(d['proofs'] for d in days)}",
                    f"readings {sum(d['readings'] for d in days)}",
                    f"log {cp.origin} {cp.size} {cp.root.hex()}",
                ]
            )
            + "\n"
        )
        note = sign_note(body, origin, self.log.signer.public_key(), self.log.signer.sign)
        self._repo.add_statement(site, month, note, self.now_ns())
        return note, True


def verify_statement(note: str, log_key: Any, log_origin: str) -> dict[str, str]:
    """Check a statement's signature with the hub's log key; its fields as a dict."""
    origin = log_origin + STATEMENT_ORIGIN_SUFFIX
    text = open_note(note, [NoteVerifier.for_key(origin, log_key)])
    lines = text.rstrip("\n").split("\n")
    if lines[0] != origin:
        raise ApiError(422, "invalid_request", "not a FactoryOps usage statement")
    return dict(line.split(" ", 1) for line in lines[1:])


@dataclass
class Webhooks:
    """Durable, retried deliveries of billing events to one URL (HMAC-signed bodies)."""

    engine: Engine
    url: str | None
    secret: str
    # retries are scheduled on the wall clock, never on an injected business clock
    now_ns: Callable[[], int] = time.time_ns
    max_attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 300.0
    timeout_s: float = 10.0
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def signature(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Record the event (same transaction semantics as the caller's write), then wake."""
        if self.url is None:
            return
        body = json.dumps({"event": event, **payload}, sort_keys=True)
        MeteringRepo(self.engine).add_delivery(event, body, self.now_ns())
        self.start()
        self._wake.set()

    def start(self) -> None:
        if self._thread is None and self.url is not None:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def deliveries(self) -> list[dict[str, Any]]:
        return MeteringRepo(self.engine).deliveries()

    def _run(self) -> None:
        rng = random.Random()
        while not self._stop.is_set():
            due = MeteringRepo(self.engine).next_due()
            if due is None:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            wait_s = (due.next_ns - self.now_ns()) / 1e9
            if wait_s > 0:
                self._wake.wait(min(wait_s, 5.0))
                self._wake.clear()
                continue
            self._attempt(due, rng)

    def _attempt(self, row: Any, rng: random.Random) -> None:
        assert self.url is not None
        body = row.body.encode()
        error = ""
        try:
            r = httpx.post(
                self.url,
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-factoryops-event": row.event,
                    "x-factoryops-delivery": str(row.id),
                    "x-factoryops-signature": self.signature(body),
                },
                timeout=self.timeout_s,
            )
            ok = 200 <= r.status_code < 300
            error = "" if ok else f"HTTP {r.status_code}"
        except httpx.HTTPError as err:
            ok, error = False, f"{type(err).__name__}: {err}"[:200]
        attempts = row.attempts + 1
        if ok:
            status, next_ns = "delivered", row.next_ns
        elif attempts >= self.max_attempts:
            status, next_ns = "failed", row.next_ns
            log.error(
                "webhook %s (delivery %d) failed %d times: %s", row.event, row.id, attempts, error
            )
        else:
            delay = rng.uniform(0, min(self.cap_s, self.base_s * 2**attempts))
            status, next_ns = "pending", self.now_ns() + int(delay * 1e9)
        MeteringRepo(self.engine).record_attempt(row.id, attempts, status, next_ns, error)
