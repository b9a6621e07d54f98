"""The outbox: the lifecycle of a sealed window on its way to the hub, and the pure decision
of what the hub's answer to an upload means for each window (``plan_outbox``).

No I/O: the uplink (agent/uplink.py) sends, asks ``plan_outbox`` what the answer means, and
the spool applies the plan in one transaction (``Spool.apply``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.errors import IllegalTransition

__all__ = [
    "OUTBOX_TRANSITIONS",
    "REFUSAL_HINTS",
    "WINDOWS_GONE",
    "OutboxEvent",
    "OutboxPlan",
    "OutboxState",
    "Refusal",
    "advance",
    "plan_outbox",
]


class OutboxState(enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    ACKED = "acked"
    REFUSED = "refused"


class OutboxEvent(enum.Enum):
    SEND = "send"  # a POST carrying it has started
    ACK = "ack"  # the hub answered accepted/duplicate; its answer is stored
    FAIL = "fail"  # transport error or 5xx: send it again
    REFUSE = "refuse"  # a 4xx retrying cannot fix
    REWIND = "rewind"  # the hub expects an earlier window (it lost what it had acked)
    RESTART = "restart"  # the agent starts: in-flight and refused proofs are tried again


OUTBOX_TRANSITIONS: Mapping[tuple[OutboxState, OutboxEvent], OutboxState] = {
    (OutboxState.PENDING, OutboxEvent.SEND): OutboxState.SENT,
    (OutboxState.SENT, OutboxEvent.ACK): OutboxState.ACKED,
    (OutboxState.SENT, OutboxEvent.FAIL): OutboxState.PENDING,
    (OutboxState.SENT, OutboxEvent.REFUSE): OutboxState.REFUSED,
    (OutboxState.SENT, OutboxEvent.RESTART): OutboxState.PENDING,
    (OutboxState.REFUSED, OutboxEvent.RESTART): OutboxState.PENDING,
    (OutboxState.ACKED, OutboxEvent.REWIND): OutboxState.PENDING,
}

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


def advance(table: Mapping[tuple[S, E], S], state: S, event: E) -> S:
    """The state after ``event``; an event the table does not allow is our bug."""
    try:
        return table[state, event]
    except KeyError:
        raise IllegalTransition(state.value, event.value) from None


# HTTP statuses that say "later" rather than "never" (RFC 9110 §15.5.9, RFC 6585 §4)
RETRY_LATER = frozenset({408, 429})
TOKEN_ERRORS = frozenset({"token_required", "token_invalid", "token_expired"})
# the code an uplink stops with when the hub asks again for windows the spool no longer holds
# (their proofs dropped or readings shed under the disk cap, ADR 0048)
WINDOWS_GONE = "windows_gone"

REFUSAL_HINTS = {
    "unknown_device": "register or enroll the device (factoryops provision enroll), then restart",
    "revoked_device": "the hub revoked this device (or it moved to a new key with `factoryops"
    " provision rotate`): re-enroll it with a new key, or start it with the new key",
    "software_key_refused": 'the hub requires a TPM key: set [device] signer = "tpm"',
    "bad_signature": "the device key does not match its enrollment: re-enroll the device",
    "fork": "the spool does not continue the hub's chain of this device (lost or replaced):"
    " stop the agent, run `factoryops agent recover --config <agent.toml>`, start it",
    "seq_gap": "a hole in seqs without a gap record: report this agent bug with the spool",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the uplink raises once the plan is applied (``UplinkRefused``)."""

    message: str
    code: str
    permanent: bool
    hint: str = ""


@dataclass(frozen=True, slots=True)
class OutboxPlan:
    """What one answer of the hub means for the windows of the upload.

    ``ack``: accepted or duplicate (stored with ``results``); ``fail``: back to pending, sent
    again later; ``refuse``: the window the hub refused for good (stored with ``answer``);
    ``rewind_from``: the hub lost acknowledged windows and expects this one again;
    ``halve_batch``: the upload was too large; ``forget_token``: the device token is stale;
    ``refusal``: what to raise after applying (None: the upload went as planned).
    """

    ack: tuple[int, ...] = ()
    results: tuple[Any, ...] = ()
    fail: tuple[int, ...] = ()
    refuse: int | None = None
    rewind_from: int | None = None
    answer: Mapping[str, Any] | None = None
    halve_batch: bool = False
    forget_token: bool = False
    refusal: Refusal | None = None


def _acknowledged(windows: Sequence[int], results: Sequence[Any]) -> set[int]:
    """The windows of this upload the hub answered accepted or duplicate."""
    return {
        int(res["window"])
        for res in results
        if isinstance(res, dict)
        and isinstance(res.get("window"), int)
        and res.get("status") in ("accepted", "duplicate")
    } & set(windows)


def plan_outbox(
    windows: Sequence[int],
    status: int,
    doc: Mapping[str, Any],
    *,
    uses_token: bool = False,
    batch: int = 1,
) -> OutboxPlan:
    """Decide what the hub's answer ``status``/``doc`` to an upload of ``windows`` (oldest
    first, ``batch`` at most) means for each of them. Pure: the caller applies the plan.

    Proofs before a refused one were accepted (the hub answers them in ``results``): they are
    acknowledged whatever else the answer says.
    """
    raw = doc.get("results", []) if status < 500 else []
    results = tuple(raw) if isinstance(raw, list) else ()
    done = _acknowledged(windows, results)
    ack = tuple(sorted(done))
    rest = tuple(w for w in windows if w not in done)
    if status == 200:
        return OutboxPlan(ack, results, fail=rest)
    code = str(doc.get("error", f"http_{status}"))
    what = f"hub answered {status} {code}: {doc.get('detail')}"
    later = Refusal(what, code, permanent=False)
    if code in TOKEN_ERRORS and uses_token:  # expired or revoked: the next try asks again
        return OutboxPlan(ack, results, fail=rest, forget_token=True, refusal=later)
    if status >= 500 or status in RETRY_LATER:
        return OutboxPlan(ack, results, fail=rest, refusal=later)
    expected = doc.get("expected_window")
    if code == "out_of_order" and isinstance(expected, int) and rest:
        if expected < rest[0]:
            # the hub lost windows it had acknowledged (restored from a backup): send them
            # again from the one it expects
            return OutboxPlan(ack, results, fail=rest, rewind_from=expected, answer=doc)
        return OutboxPlan(ack, results, fail=rest, refusal=later)
    if code == "too_large" and batch > 1:
        return OutboxPlan(ack, results, fail=rest, halve_batch=True)
    index = doc.get("index", 0)
    refused = windows[index] if isinstance(index, int) and 0 <= index < len(windows) else None
    refused = refused if refused in rest else rest[0] if rest else None
    hint = REFUSAL_HINTS.get(code, "see docs/protocol.md for this error code")
    return OutboxPlan(
        ack,
        results,
        fail=tuple(w for w in rest if w != refused),
        refuse=refused,
        answer=doc,
        refusal=Refusal(f"{what} (window {refused})", code, permanent=True, hint=hint),
    )
