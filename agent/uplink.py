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
from agent.config import write_atomically
from agent.errors import AgentError, UplinkRefused
from agent.spool import OutboxItem, Spool
from agent.window import OutboxEvent
from attestation.device_auth import auth_message
from attestation.reading import encode_leaf
from attestation.signers.base import Signer
from attestation.utid import utid_bytes, utid_text

__all__ = ["Uplink", "UplinkStats", "encode_upload", "register_device"]

log = logging.getLogger(__name__)
T = TypeVar("T")
SpoolCall = Callable[[Callable[[], T]], Awaitable[T]]


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
    stopped: str | None = None  # set when a refusal stopped the uplink


# HTTP statuses that say "later" rather than "never" (RFC 9110 §15.5.9, RFC 6585 §4)
_RETRY_LATER = frozenset({408, 429})


LOG_KEY_FILE = "hub-log.vkey"  # the hub's checkpoint key, pinned at registration/enrollment
_TOKEN_ERRORS = frozenset({"token_required", "token_invalid", "token_expired"})


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
            doc = _json(r)
            if r.status_code != 200:
                raise UplinkRefused(
                    f"hub refused a challenge: {doc.get('error')}: {doc.get('detail')}",
                    code=str(doc.get("error", f"http_{r.status_code}")),
                    permanent=r.status_code in (403, 404),
                    hint=_REFUSAL_HINTS.get(str(doc.get("error")), ""),
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
            doc = _json(r)
            if r.status_code != 200:
                raise UplinkRefused(
                    f"hub refused a token: {doc.get('error')}: {doc.get('detail')}",
                    code=str(doc.get("error", f"http_{r.status_code}")),
                    permanent=False,
                )
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
    device_token: DeviceToken | None = None  # enrolled (TPM) devices authenticate
    policy: bytes | None = None  # the signed storage policy (attestation/policy.py)
    signer_der: bytes = b""  # the device key (SPKI DER), to name the device
    policy_sent: bool = False

    async def run(self) -> None:
        attempt = 0
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
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
                    self.stats.last_error = str(err)
                    if err.permanent:
                        self.stats.stopped = str(err)
                        # a refusal is an answer, not a crash: no traceback
                        log.error("uplink STOPPED: %s (hint: %s)", err, err.hint)  # noqa: TRY400
                        return
                    self.stats.failures += 1
                    attempt = await self._pause(err, attempt)
                except httpx.HTTPError as err:
                    self.stats.failures += 1
                    self.stats.last_error = str(err)
                    attempt = await self._pause(err, attempt)

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
        delay = self.backoff.delay(attempt, self.rng)
        log.warning("uplink: %s; retrying in %.2fs", err, delay)
        await asyncio.sleep(delay)
        return attempt + 1

    async def drain(self) -> bool:
        """Upload until the outbox is empty or one attempt fails (used at shutdown, once
        ``run`` has ended: a proof it left marked sent, cancelled before the hub's answer
        came back, is sent again, not skipped)."""
        if self.stats.stopped:
            return False
        await self.spool_call(self.spool.requeue_in_flight)
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while items := await self.spool_call(lambda: self.spool.pending(self.batch)):
                try:
                    await self._send(client, items)
                except (httpx.HTTPError, UplinkRefused) as err:
                    log.warning("uplink drain stopped: %s", err)
                    return False
        return True

    async def _mark(
        self, windows: list[int], event: OutboxEvent, answer: dict[str, Any] | None = None
    ) -> None:
        await self.spool_call(lambda: self.spool.mark(windows, event, answer))

    async def _send(self, client: httpx.AsyncClient, items: list[OutboxItem]) -> None:
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
        doc = _json(r)
        # proofs before a refused one were accepted; record them before anything else
        done = await self._ack(items, doc.get("results", []) if r.status_code < 500 else [])
        rest = [w for w in windows if w not in done]
        if r.status_code == 200:
            await self._mark(rest, OutboxEvent.FAIL)
            return
        code = str(doc.get("error", f"http_{r.status_code}"))
        what = f"hub answered {r.status_code} {code}: {doc.get('detail')}"
        if code in _TOKEN_ERRORS and self.device_token is not None:
            self.device_token.forget()  # expired or revoked: the next try asks again
            await self._mark(rest, OutboxEvent.FAIL)
            raise UplinkRefused(what, code=code, permanent=False)
        if r.status_code >= 500 or r.status_code in _RETRY_LATER:
            await self._mark(rest, OutboxEvent.FAIL)
            raise UplinkRefused(what, code=code, permanent=False)
        expected = doc.get("expected_window")
        if code == "out_of_order" and isinstance(expected, int) and rest:
            await self._mark(rest, OutboxEvent.FAIL)
            if expected < rest[0]:
                # the hub lost windows it had acknowledged (restored from a backup):
                # send them again from the one it expects
                again = await self.spool_call(lambda: self.spool.rewind(expected, doc))
                self.stats.rewinds += 1
                log.warning("uplink: hub expects window %d; resending %d", expected, len(again))
                return
            raise UplinkRefused(what, code=code, permanent=False)
        if code == "too_large" and self.batch > 1:
            await self._mark(rest, OutboxEvent.FAIL)
            self.batch = max(1, self.batch // 2)
            log.warning("uplink: %s; batches of %d proofs from now on", what, self.batch)
            return
        index = doc.get("index", 0)
        refused = items[index].window if isinstance(index, int) and index < len(items) else None
        refused = refused if refused in rest else rest[0] if rest else None
        if refused is not None:
            await self._mark([refused], OutboxEvent.REFUSE, doc)
            await self._mark([w for w in rest if w != refused], OutboxEvent.FAIL)
        self.stats.refusals += 1
        raise UplinkRefused(
            f"{what} (window {refused})",
            code=code,
            permanent=True,
            hint=_REFUSAL_HINTS.get(code, "see docs/protocol.md for this error code"),
        )

    async def _ack(self, items: list[OutboxItem], results: list[Any]) -> set[int]:
        sent = {i.window for i in items}
        done = {
            int(res["window"])
            for res in results
            if isinstance(res, dict)
            and isinstance(res.get("window"), int)
            and res.get("status") in ("accepted", "duplicate")
        } & sent
        if not done:
            return done
        acked = sorted(done)
        await self._mark(acked, OutboxEvent.ACK, {"results": results})
        self.stats.synced_windows += len(done)
        self.stats.synced_readings += sum(len(i.readings) for i in items if i.window in done)
        self.stats.last_sync_ns = time.time_ns()
        if self.on_synced is not None:
            self.on_synced(acked)
        return done


_REFUSAL_HINTS = {
    "unknown_device": "register or enroll the device (factoryops provision enroll), then restart",
    "revoked_device": "the hub revoked this device: re-enroll it with a new key",
    "software_key_refused": 'the hub requires a TPM key: set [device] signer = "tpm"',
    "bad_signature": "the device key does not match its enrollment: re-enroll the device",
    "fork": "the hub holds other bytes for this window: the spool was replaced; re-enroll",
    "seq_gap": "a hole in seqs without a gap record: report this agent bug with the spool",
}


def _json(r: httpx.Response) -> dict[str, Any]:
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
    doc = _json(r)
    if r.status_code not in (200, 201):
        raise AgentError(f"hub refused registration: {doc.get('error')}: {doc.get('detail')}")
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(state_dir / "device-cert.pem", str(doc["certificate_pem"]).encode())
    write_atomically(state_dir / "fleet-ca.pem", str(doc["fleet_ca_pem"]).encode())
    write_atomically(state_dir / LOG_KEY_FILE, str(doc["log_vkey"]).encode())
    return str(doc["utid"])
