"""The agent's side of the sync protocol (docs/protocol.md): upload, record acks, retry.

Micro-proofs leave the spool oldest first with their leaves; an acknowledgement is
written to the spool before it counts. A down hub means capped, jittered retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import httpx
from cryptography.hazmat.primitives import serialization

from agent.backoff import Backoff
from agent.errors import AgentError, UplinkRefused, WindowsGone
from agent.outbox import (
    REFUSAL_HINTS,
    WINDOWS_GONE,
    OutboxEvent,
    OutboxPlan,
    Refusal,
    plan_outbox,
)
from agent.spool import OutboxItem, Spool
from attestation.device_auth import auth_message
from attestation.durable import write_atomically
from attestation.reading import encode_leaf
from attestation.signers.base import Signer
from attestation.utid import utid_bytes, utid_text

__all__ = [
    "KEEPALIVE_S",
    "Uplink",
    "UplinkStats",
    "answer_json",
    "encode_upload",
    "hub_client",
    "refusal",
    "register_device",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
SpoolCall = Callable[[Callable[[], T]], Awaitable[T]]

KEEPALIVE_S = 60.0
"""Seconds the uplink keeps its idle connection to the hub. httpx's default (5 s) is shorter
than a window (10 s by default), so every upload paid a new TCP connection (and TLS
handshake); at fleet scale that was ~240 us of the hub's CPU an upload of one proof
(issue 16, docs/performance.md). Below the hub's own idle limit (``factoryops hub serve
--keep-alive``, 75 s), so the hub never closes a connection the agent is about to use."""


async def hub_client(timeout_s: float, keepalive_s: float = KEEPALIVE_S) -> httpx.AsyncClient:
    """An HTTP client for the hub whose TLS context is made off the event loop: httpx makes
    it in the constructor (CA bundle parsed, 0.24-0.9 s measured on a loaded gateway-class
    machine), which stalled the loop long enough for connectors starting beside it to time
    out their first connect. Its connection is kept ``keepalive_s`` between uploads."""
    tls = await asyncio.to_thread(httpx.create_ssl_context)
    limits = httpx.Limits(keepalive_expiry=keepalive_s)
    return httpx.AsyncClient(timeout=timeout_s, verify=tls, limits=limits)


def encode_upload(items: list[OutboxItem]) -> bytes:
    """CBOR body of POST /v1/proofs: each window's leaves back to back in one byte string
    (a CBOR sequence; the hub stores those bytes as they are, ADR 0008)."""
    return cbor2.dumps(
        {
            "proofs": [
                {"cose": i.cose, "leaves": b"".join(map(encode_leaf, i.readings))} for i in items
            ]
        }
    )


@dataclass
class UplinkStats:
    synced_windows: int = 0
    synced_readings: int = 0
    failures: int = 0
    refusals: int = 0
    rewinds: int = 0
    last_sync_ns: int | None = None
    last_error: str | None = None
    last_error_ns: int | None = None
    stopped: str | None = None  # set when a refusal stopped the uplink
    stopped_code: str | None = None  # the hub's error code that stopped it (``fork`` ...)


def describe_failure(err: BaseException) -> str:
    """Why an upload failed, never empty: httpx's ConnectError and timeouts often carry no
    message (``str(err) == ""``), which left the retry warning with a blank reason."""
    text = str(err).strip()
    kind = type(err).__name__
    try:
        request = err.request if isinstance(err, httpx.RequestError) else None
    except RuntimeError:  # httpx raises when the error was made without a request
        request = None
    where = f" ({request.method} {request.url})" if request is not None else ""
    return f"{kind}: {text}{where}" if text else f"{kind}{where}"


LOG_KEY_FILE = "hub-log.vkey"  # the hub's checkpoint key, pinned at registration/enrollment


@dataclass
class DeviceToken:
    """A short-lived hub token for an enrolled device: challenge -> signature -> token.

    Fetched on first use, renewed a minute before it expires or when the hub refuses it.
    """

    url: str
    signer: Signer
    _token: str | None = None
    _renew_at: float = 0.0

    @property
    def utid(self) -> str:
        return utid_text(utid_bytes(self.signer.public_key_der()))

    def forget(self) -> None:
        self._token = None

    async def header(self, client: httpx.AsyncClient) -> dict[str, str]:
        if self._token is None or time.monotonic() >= self._renew_at:
            utid = self.utid
            r = await client.post(f"{self.url}/v1/devices/{utid}/challenge")
            doc = answer_json(r)
            if r.status_code != 200:
                raise refusal(
                    "a challenge",
                    r,
                    doc,
                    permanent=r.status_code in (403, 404),
                    hint=REFUSAL_HINTS.get(str(doc.get("error")), ""),
                )
            challenge = base64.b64decode(str(doc["challenge"]))
            # a TPM signature takes ~200 ms: off the event loop
            sig = await asyncio.to_thread(self.signer.sign, auth_message(utid, challenge))
            r = await client.post(
                f"{self.url}/v1/devices/{utid}/token",
                json={
                    "challenge": base64.b64encode(challenge).decode(),
                    "signature": base64.b64encode(sig).decode(),
                },
            )
            doc = answer_json(r)
            if r.status_code != 200:
                raise refusal("a token", r, doc, permanent=False)
            self._token = str(doc["token"])
            self._renew_at = time.monotonic() + max(0.0, float(doc["expires_in"]) - 60.0)
        return {"authorization": f"Bearer {self._token}"}


@dataclass
class Uplink:
    """Drains the spool's outbox to the hub.

    ``run`` returns when cancelled, or when the hub refuses a proof for a reason that
    retrying cannot fix (unknown device, bad signature, fork ...): it logs that loudly and
    leaves the proof ``refused`` in the spool (tried again at the next agent start).
    """

    spool: Spool
    url: str
    spool_call: SpoolCall[Any]
    batch: int = 32
    timeout_s: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)
    stats: UplinkStats = field(default_factory=UplinkStats)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle_poll_s: float = 1.0
    on_synced: Callable[[list[int]], None] | None = None
    on_failure: Callable[[], None] | None = None  # each upload that failed and will retry
    device_token: DeviceToken | None = None  # enrolled (TPM) devices authenticate
    policy: bytes | None = None  # the signed storage policy (attestation/policy.py)
    signer_der: bytes = b""  # the device key (SPKI DER), to name the device
    policy_sent: bool = False
    keepalive_s: float = KEEPALIVE_S

    async def run(self) -> None:
        attempt = 0
        async with await hub_client(self.timeout_s, self.keepalive_s) as client:
            while True:
                if self.policy is not None and not self.policy_sent:
                    await self._send_policy(client)
                items: list[OutboxItem] = await self.spool_call(
                    lambda: self.spool.pending(self.batch)
                )
                if not items:
                    self.wake.clear()
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                    # cancellation that races with the event (cpython gh-86296)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.idle_poll_s):
                            await self.wake.wait()
                    continue
                try:
                    await self._send(client, items)
                    attempt = 0
                except UplinkRefused as err:
                    if err.permanent:
                        self._failed(err)
                        self.stats.stopped = str(err)
                        self.stats.stopped_code = err.code
                        # a refusal is an answer, not a crash: no traceback
                        log.error("uplink STOPPED: %s (hint: %s)", err, err.hint)  # noqa: TRY400 - an answer, not a crash
                        return
                    attempt = await self._pause(err, attempt)
                except httpx.HTTPError as err:
                    attempt = await self._pause(err, attempt)

    def _failed(self, err: BaseException) -> str:
        why = describe_failure(err)
        self.stats.last_error = why
        self.stats.last_error_ns = time.time_ns()
        return why

    async def _send_policy(self, client: httpx.AsyncClient) -> None:
        """The signed storage policy, once per start; a failure is retried with the proofs."""
        assert self.policy is not None
        utid = utid_text(utid_bytes(self.signer_der))
        headers = {"content-type": "application/cose"}
        try:
            if self.device_token is not None:
                headers |= await self.device_token.header(client)
            r = await client.post(
                f"{self.url}/v1/devices/{utid}/policy", content=self.policy, headers=headers
            )
        except (httpx.HTTPError, UplinkRefused) as err:
            log.warning("uplink: storage policy not sent yet: %s", err)
            return
        if r.status_code == 200:
            self.policy_sent = True
        else:
            log.warning("uplink: hub refused the storage policy: %s", r.text[:200])
            self.policy_sent = r.status_code < 500  # a 4xx will not get better this run

    async def _pause(self, err: Exception, attempt: int) -> int:
        why = self._failed(err)
        self.stats.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        told = err.retry_after_s if isinstance(err, UplinkRefused) else 0.0
        delay = self.backoff.delay_told(attempt, self.rng, told)
        log.warning("uplink: %s; retrying in %.2fs", why, delay)
        await asyncio.sleep(delay)
        return attempt + 1

    async def drain(self) -> bool:
        """Upload until the outbox is empty or one attempt fails (used at shutdown, once
        ``run`` has ended: a proof it left marked sent, cancelled before the hub's answer
        came back, is sent again, not skipped)."""
        if self.stats.stopped:
            return False
        await self.spool_call(self.spool.requeue_in_flight)
        async with await hub_client(self.timeout_s, self.keepalive_s) as client:
            while items := await self.spool_call(lambda: self.spool.pending(self.batch)):
                try:
                    await self._send(client, items)
                except (httpx.HTTPError, UplinkRefused) as err:
                    log.warning("uplink drain stopped: %s", err)
                    return False
        return True

    async def _mark(self, windows: list[int], event: OutboxEvent) -> None:
        await self.spool_call(lambda: self.spool.mark(windows, event))

    async def _send(self, client: httpx.AsyncClient, items: list[OutboxItem]) -> None:
        """One upload: mark the windows sent, POST them, then apply what ``plan_outbox``
        makes of the answer in one spool transaction (decide, then act)."""
        windows = [i.window for i in items]
        await self._mark(windows, OutboxEvent.SEND)
        try:
            headers = {"content-type": "application/cbor"}
            if self.device_token is not None:
                headers |= await self.device_token.header(client)
            r = await client.post(
                f"{self.url}/v1/proofs", content=encode_upload(items), headers=headers
            )
        except BaseException:
            # transport error or cancellation: nothing was acknowledged, send again later
            await self._mark(windows, OutboxEvent.FAIL)
            raise
        plan = plan_outbox(
            windows,
            r.status_code,
            answer_json(r),
            uses_token=self.device_token is not None,
            batch=self.batch,
        )
        refused = plan.refusal
        try:
            again = await self.spool_call(lambda: self.spool.apply(plan))
        except WindowsGone as err:
            # the hub lost windows this spool no longer holds: sending on cannot fix that,
            # so the uplink stops with the reason (ADR 0048) instead of crashing the agent
            again, refused = [], Refusal(str(err), WINDOWS_GONE, permanent=True, hint=err.hint)
        self._count_acks(items, plan)
        if plan.forget_token and self.device_token is not None:
            self.device_token.forget()
        if plan.rewind_from is not None and refused is None:
            self.stats.rewinds += 1
            log.warning("uplink: hub expects window %d; resending %d", plan.rewind_from, len(again))
        if plan.halve_batch:
            self.batch = max(1, self.batch // 2)
            log.warning("uplink: upload too large; batches of %d proofs from now on", self.batch)
        if refused is not None:
            if refused.permanent:
                self.stats.refusals += 1
            raise UplinkRefused(
                refused.message,
                code=refused.code,
                permanent=refused.permanent,
                hint=refused.hint,
                retry_after_s=retry_after(r.headers.get("retry-after")),
            )

    def _count_acks(self, items: list[OutboxItem], plan: OutboxPlan) -> None:
        if not plan.ack:
            return
        done = set(plan.ack)
        self.stats.synced_windows += len(done)
        self.stats.synced_readings += sum(len(i.readings) for i in items if i.window in done)
        self.stats.last_sync_ns = time.time_ns()
        if self.on_synced is not None:
            self.on_synced(list(plan.ack))


def refusal(
    what: str, r: httpx.Response, doc: dict[str, Any], *, permanent: bool, hint: str = ""
) -> UplinkRefused:
    """The hub said no to ``what``: its error code and detail, as an ``UplinkRefused``."""
    return UplinkRefused(
        f"hub refused {what}: {doc.get('error')}: {doc.get('detail')}",
        code=str(doc.get("error", f"http_{r.status_code}")),
        permanent=permanent,
        hint=hint,
    )


def retry_after(header: str | None) -> float:
    """Seconds of an HTTP ``Retry-After`` given in seconds (0 when absent, or a date: the
    hub sends seconds)."""
    if header is None or not header.strip().isdigit():
        return 0.0
    return float(header.strip())


def answer_json(r: httpx.Response) -> dict[str, Any]:
    try:
        doc = r.json()
    except ValueError:
        return {"error": "not_json", "detail": r.text[:200]}
    return doc if isinstance(doc, dict) else {"error": "not_json", "detail": str(doc)[:200]}


def register_device(
    hub_url: str,
    admin_token: str,
    signer: Signer,
    *,
    name: str,
    state_dir: Path,
    timeout_s: float = 10.0,
) -> str:
    """Development registration (POST /v1/devices); keeps the certificate and fleet CA."""
    key = serialization.load_der_public_key(signer.public_key_der())
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    try:
        r = httpx.post(
            f"{hub_url}/v1/devices",
            json={"public_key_pem": pem, "key_kind": signer.kind, "name": name},
            headers={"authorization": f"Bearer {admin_token}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as err:
        raise AgentError(
            f"cannot reach the hub at {hub_url}: {err}",
            hint="check [hub] url and that the hub is running",
        ) from err
    doc = answer_json(r)
    if r.status_code not in (200, 201):
        raise AgentError(f"hub refused registration: {doc.get('error')}: {doc.get('detail')}")
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(state_dir / "device-cert.pem", str(doc["certificate_pem"]).encode())
    write_atomically(state_dir / "fleet-ca.pem", str(doc["fleet_ca_pem"]).encode())
    write_atomically(state_dir / LOG_KEY_FILE, str(doc["log_vkey"]).encode())
    return str(doc["utid"])
