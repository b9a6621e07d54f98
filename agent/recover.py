"""Continuing a device's chain from the hub's head when the spool is lost, corrupt or forked.

A fresh spool would restart the chain at window 0 with the genesis ``prev``; a hub that holds
windows of this device answers ``409 fork`` and uploads stop. Instead the agent asks the hub
for its head (``GET /v1/devices/{utid}/head``) and continues after it; the first new window
signs a reset record (payload key 18) saying why, so the readings the old spool held after
that head are stated as lost, not silently missing (ADR 0027).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.errors import AgentError, SpoolError, UplinkRefused
from agent.spool import Spool
from agent.uplink import DeviceToken, SpoolCall, answer_json, hub_client, refusal
from attestation.microproof import GENESIS_PREV
from attestation.signers.base import Signer
from attestation.utid import utid_bytes, utid_text

__all__ = [
    "FORKED_SUFFIX",
    "SPOOL_CORRUPT",
    "SPOOL_FORKED",
    "SPOOL_LOST",
    "SPOOL_SHED",
    "HubHead",
    "continue_fresh_spool",
    "fetch_head",
    "move_aside",
    "recover_spool",
    "spool_backlog",
    "spool_head",
]

log = logging.getLogger(__name__)

SPOOL_LOST = "spool_lost"  # a start found an empty spool while the hub holds this device's chain
SPOOL_FORKED = "spool_forked"  # `factoryops agent recover` replaced a spool the hub refused
SPOOL_CORRUPT = "spool_corrupt"  # `factoryops agent recover` replaced a spool SQLite refused
# `factoryops agent recover` replaced a spool that holds the hub's head but shed the readings
# of windows after it (the hub lost windows it had acknowledged; ADR 0048)
SPOOL_SHED = "spool_shed"
FORKED_SUFFIX = ".forked-"


@dataclass(frozen=True, slots=True)
class HubHead:
    """The hub's last accepted window of this device; ``window`` -1: none yet."""

    window: int
    last_seq: int
    head_hash: bytes | None
    last_ts_ns: int | None


async def fetch_head(url: str, signer: Signer, timeout_s: float) -> HubHead:
    """Ask the hub for this device's chain head, authenticated like an upload (a TPM device
    with its device token, a development key without)."""
    utid = utid_text(utid_bytes(signer.public_key_der()))
    async with await hub_client(timeout_s) as client:
        headers = {}
        if signer.kind == "tpm":
            headers = await DeviceToken(url, signer).header(client)
        r = await client.get(f"{url}/v1/devices/{utid}/head", headers=headers)
    doc = answer_json(r)
    if r.status_code != 200:
        raise refusal("the chain head", r, doc, permanent=r.status_code in (403, 404))
    raw = doc.get("head_hash")
    return HubHead(
        int(doc["window"]),
        int(doc["last_seq"]),
        bytes.fromhex(raw) if isinstance(raw, str) else None,
        doc.get("last_ts_ns") if isinstance(doc.get("last_ts_ns"), int) else None,
    )


async def _inline(fn: Callable[[], Any]) -> Any:
    return fn()


async def continue_fresh_spool(
    spool: Spool,
    url: str,
    signer: Signer,
    timeout_s: float,
    reason: str = SPOOL_LOST,
    *,
    run: SpoolCall[Any] = _inline,
) -> HubHead | None:
    """If ``spool`` is fresh and the hub holds a chain of this device, continue it.

    Returns the head continued from, or None (the spool was not fresh, the hub knows no
    window of this device, or it could not be asked: then the chain starts at genesis as
    before and a later ``fork`` answer is reported with the recover command). ``run``
    calls the spool (the runtime passes its spool thread).
    """
    if not await run(spool.is_fresh):
        return None
    try:
        head = await fetch_head(url, signer, timeout_s)
    except (httpx.HTTPError, UplinkRefused) as err:
        log.warning("spool: new spool and the hub's chain head is unknown (%s): starting"
                    " at genesis", str(err) or type(err).__name__)  # fmt: skip
        return None
    if head.window < 0 or head.head_hash is None:
        return None
    found = head.head_hash

    def continue_it() -> None:
        spool.continue_chain(head.window, head.last_seq, found, reason)

    await run(continue_it)
    log.warning(
        "spool: new spool; continuing the hub's chain after window %d (last seq %d):"
        " readings of the lost spool after it are lost (reset record %s)",
        head.window,
        head.last_seq,
        reason,
    )
    return head


def move_aside(path: Path, now: dt.datetime) -> Path:
    """Rename the spool (and its WAL/SHM files) to ``spool.db.forked-<UTC timestamp>``,
    keeping its readings for an operator."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}{FORKED_SUFFIX}{stamp}")
    if target.exists():
        raise AgentError(f"{target} exists already", hint="wait a second and run it again")
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.rename(Path(f"{target}{suffix}"))
    path.rename(target)
    return target


def spool_head(spool: Spool) -> tuple[int, bytes]:
    """The spool's last sealed window and its hash (window -1: none)."""
    st = spool.state()
    return st.next_window - 1, st.prev_hash


def spool_backlog(path: Path) -> tuple[int, bytes, int]:
    """The spool's chain head (window, hash; -1 and the genesis hash for none) and how many of
    its windows the hub has not acknowledged. No spool at ``path``: nothing sealed yet."""
    if not path.exists():
        return -1, GENESIS_PREV, 0
    spool = Spool(path)
    try:
        window, head = spool_head(spool)
        counts = spool.counts()
    finally:
        spool.close()
    return window, head, counts["windows"] - counts["acked"]


def recover_spool(path: Path, head: HubHead, now: dt.datetime) -> str:
    """``factoryops agent recover`` once the hub's head is known: make the spool at ``path``
    continue it. Returns what was done, one line; changes nothing when the spool already
    continues the hub's chain (a healthy gateway)."""
    if head.window < 0 or head.head_hash is None:
        return "the hub holds no window of this device: nothing to recover (uploads start at 0)"
    reason = SPOOL_FORKED
    try:
        spool: Spool | None = Spool(path)
    except SpoolError as err:  # corrupt: it is moved aside like a forked one
        log.warning("spool: %s", err)
        spool, reason = None, SPOOL_CORRUPT
    if spool is not None:
        try:
            if spool.is_fresh():
                spool.continue_chain(head.window, head.last_seq, head.head_hash, SPOOL_LOST)
                return (
                    f"new spool {path} continues the hub's chain after window {head.window}"
                    f" (last seq {head.last_seq})"
                )
            if spool_head(spool) == (head.window, head.head_hash) or _holds(spool, head):
                shed = spool.first_shed_after(head.window)
                if shed is None:
                    last, _ = spool_head(spool)
                    return (
                        f"healthy: the spool holds the hub's head (window {head.window}) and"
                        f" continues it to window {last}; nothing changed"
                    )
                # the hub lost windows it had acknowledged and the spool shed their readings:
                # they can never be sent again, so the chain goes on from the hub's head
                log.warning(
                    "the spool holds the hub's head (window %d) but shed the readings of"
                    " window %d after it: they cannot be uploaded again",
                    head.window,
                    shed,
                )
                reason = SPOOL_SHED
        finally:
            spool.close()
    aside = move_aside(path, now)
    fresh = Spool(path)
    try:
        fresh.continue_chain(head.window, head.last_seq, head.head_hash, reason)
    finally:
        fresh.close()
    return (
        f"moved the old spool to {aside} (its readings kept for an operator); new spool {path}"
        f" continues the hub's chain after window {head.window} (last seq {head.last_seq})"
    )


def _holds(spool: Spool, head: HubHead) -> bool:
    """Whether the spool's chain contains the hub's head window, byte for byte."""
    try:
        cose, _ = spool.window_readings(head.window)
    except SpoolError:
        return False
    return hashlib.sha256(cose).digest() == head.head_hash
