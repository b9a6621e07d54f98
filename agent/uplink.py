"""The agent's side of the sync protocol (docs/protocol.md): upload, record acks, retry.

Micro-proofs leave the spool oldest first with their leaves; an acknowledgement is
written to the spool before it counts. A down hub means capped, jittered retries.
"""

from __future__ import annotations

import asyncio
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
from attestation.reading import encode_leaf
from attestation.signers.base import Signer

__all__ = ["Uplink", "UplinkStats", "encode_upload", "register_device"]

log = logging.getLogger(__name__)
T = TypeVar("T")
SpoolCall = Callable[[Callable[[], T]], Awaitable[T]]


def encode_upload(items: list[OutboxItem]) -> bytes:
    """CBOR body of POST /v1/proofs."""
    return cbor2.dumps(
        {
            "proofs": [
                {"cose": i.cose, "leaves": [encode_leaf(r) for r in i.readings]} for i in items
            ]
        }
    )


@dataclass
class UplinkStats:
    synced_windows: int = 0
    synced_readings: int = 0
    failures: int = 0
    refusals: int = 0
    last_sync_ns: int | None = None
    last_error: str | None = None


@dataclass
class Uplink:
    """Drains the spool's outbox to the hub; ``run`` returns only when cancelled."""

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

    async def run(self) -> None:
        attempt = 0
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while True:
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
                except (httpx.HTTPError, UplinkRefused) as err:
                    self.stats.failures += 1
                    self.stats.last_error = str(err)
                    delay = self.backoff.delay(attempt, self.rng)
                    attempt += 1
                    log.warning("uplink: %s; retrying in %.2fs", err, delay)
                    await asyncio.sleep(delay)

    async def drain(self) -> bool:
        """Upload until the outbox is empty or one attempt fails (used at shutdown)."""
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while items := await self.spool_call(lambda: self.spool.pending(self.batch)):
                try:
                    await self._send(client, items)
                except (httpx.HTTPError, UplinkRefused) as err:
                    log.warning("uplink drain stopped: %s", err)
                    return False
        return True

    async def _send(self, client: httpx.AsyncClient, items: list[OutboxItem]) -> None:
        r = await client.post(
            f"{self.url}/v1/proofs",
            content=encode_upload(items),
            headers={"content-type": "application/cbor"},
        )
        if r.status_code >= 500:
            raise httpx.HTTPStatusError(
                f"hub answered {r.status_code}", request=r.request, response=r
            )
        doc = _json(r)
        if r.status_code == 200:
            await self._ack(items, doc.get("results", []))
            return
        # Proofs before a refused one were accepted; record them first.
        await self._ack(items, doc.get("results", []))
        code = doc.get("error")
        expected = doc.get("expected_window")
        if r.status_code == 409 and isinstance(expected, int) and expected > items[0].window:
            # the hub is ahead of our outbox: our earlier acks were lost in transit
            done = [i.window for i in items if i.window < expected]
            await self.spool_call(
                lambda: self.spool.mark(
                    done, "acked", {"status": "hub already had it", "expected_window": expected}
                )
            )
            self._count(items, done)
            return
        self.stats.refusals += 1
        raise UplinkRefused(
            f"hub refused window {items[0].window}: {code}: {doc.get('detail')}",
            hint="check the device's enrollment with `factoryops hub devices`",
        )

    async def _ack(self, items: list[OutboxItem], results: list[Any]) -> None:
        done = [int(res["window"]) for res in results if isinstance(res, dict) and "window" in res]
        if not done:
            return
        await self.spool_call(lambda: self.spool.mark(done, "acked", {"results": results}))
        self._count(items, done)

    def _count(self, items: list[OutboxItem], done: list[int]) -> None:
        acked = set(done)
        self.stats.synced_windows += len(acked)
        self.stats.synced_readings += sum(len(i.readings) for i in items if i.window in acked)
        self.stats.last_sync_ns = time.time_ns()


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
    return str(doc["utid"])
