"""The window builder and the window/outbox lifecycles: pure state machines, no I/O.

The builder numbers readings gap-free and closes a window at ``max_readings`` readings or
``max_ms`` after its first reading, whichever comes first; time is passed in, never read.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from agent.connectors.base import QUALITY_BAD, Sample
from agent.errors import IllegalTransition
from attestation.microproof import Gap
from attestation.reading import Reading

__all__ = [
    "OUTBOX_TRANSITIONS",
    "WINDOW_TRANSITIONS",
    "ClosedWindow",
    "OutboxEvent",
    "OutboxState",
    "WindowBuilder",
    "WindowEvent",
    "WindowState",
    "advance",
    "bad_quality",
    "merge_windows",
    "runs",
]


class WindowState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    SIGNED = "signed"
    COMMITTED = "committed"  # from here on the window lives in the outbox


class WindowEvent(enum.Enum):
    ADD = "add"
    FULL = "full"  # max_readings reached
    AGED = "aged"  # max_ms since the first reading
    CUT = "cut"  # a gap record must start a new window
    FLUSH = "flush"  # shutdown
    SIGN = "sign"
    COMMIT = "commit"


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


WINDOW_TRANSITIONS: Mapping[tuple[WindowState, WindowEvent], WindowState] = {
    (WindowState.OPEN, WindowEvent.ADD): WindowState.OPEN,
    (WindowState.OPEN, WindowEvent.FULL): WindowState.CLOSED,
    (WindowState.OPEN, WindowEvent.AGED): WindowState.CLOSED,
    (WindowState.OPEN, WindowEvent.CUT): WindowState.CLOSED,
    (WindowState.OPEN, WindowEvent.FLUSH): WindowState.CLOSED,
    (WindowState.CLOSED, WindowEvent.SIGN): WindowState.SIGNED,
    (WindowState.SIGNED, WindowEvent.COMMIT): WindowState.COMMITTED,
}

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


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """Readings with consecutive seqs, ready to be scored, signed and committed.

    ``gaps`` are the signed gap records that precede the first reading (seqs that were
    handed out but whose readings were lost: a crash, a queue overflow).
    """

    readings: tuple[Reading, ...]
    gaps: tuple[Gap, ...] = ()

    @property
    def first_seq(self) -> int:
        return self.readings[0].seq

    @property
    def last_seq(self) -> int:
        return self.readings[-1].seq


def merge_windows(windows: Iterable[ClosedWindow]) -> ClosedWindow:
    """Join consecutive windows into one (the signer fell behind: one signature for all).

    Only the first window may carry gap records: the hub checks that a proof's leaves
    run without a hole from its first seq, so a gap always starts a new proof.
    """
    readings: list[Reading] = []
    gaps: tuple[Gap, ...] = ()
    for w in windows:
        if readings and (w.gaps or w.first_seq != readings[-1].seq + 1):
            raise ValueError(f"window at seq {w.first_seq} does not follow {readings[-1].seq}")
        if not readings:
            gaps = w.gaps
        readings.extend(w.readings)
    if not readings:
        raise ValueError("nothing to merge")
    return ClosedWindow(tuple(readings), gaps)


def runs(windows: Iterable[ClosedWindow]) -> list[list[ClosedWindow]]:
    """Split closed windows into runs that ``merge_windows`` can join (a gap starts a run)."""
    out: list[list[ClosedWindow]] = []
    for w in windows:
        if not out or w.gaps:
            out.append([w])
        else:
            out[-1].append(w)
    return out


def bad_quality(quality: int) -> int:
    """A value that is not a number (NaN, infinite) is Bad whatever its source said.

    OPC UA StatusCode layout: the top two bits are the severity (00 good, 01 uncertain,
    10 bad); the rest, the source's sub-code, is kept so the reason is not lost.
    """
    return (quality & 0x3FFFFFFF) | QUALITY_BAD


@dataclass
class WindowBuilder:
    """Assigns gap-free seqs from ``next_seq`` and cuts windows by count or age.

    ``gaps`` holds gap records not yet attached to a window (a restart's lost seqs); the
    next window to close carries them.
    """

    max_readings: int
    max_ms: int
    next_seq: int = 0
    gaps: list[Gap] = field(default_factory=list)
    _open: list[Reading] = field(default_factory=list)
    _opened_ns: int | None = None
    _state: WindowState = WindowState.OPEN

    @property
    def open_count(self) -> int:
        return len(self._open)

    def add(self, samples: Iterable[Sample], now_ns: int) -> list[ClosedWindow]:
        """Number ``samples`` and return every window that filled up."""
        closed: list[ClosedWindow] = []
        closed.extend(self.tick(now_ns))
        for s in samples:
            if self._opened_ns is None:
                self._opened_ns = now_ns
            quality = s.quality if math.isfinite(s.value) else bad_quality(s.quality)
            self._open.append(Reading(self.next_seq, s.ts_ns, s.signal, s.value, s.unit, quality))
            self.next_seq += 1
            if len(self._open) >= self.max_readings:
                closed.append(self._close(WindowEvent.FULL))
        return closed

    def skip(self, count: int, reason: str) -> list[ClosedWindow]:
        """Spend ``count`` seqs on readings that were lost; they become a gap record.

        The open window is closed first so the gap falls between two proofs.
        """
        closed = [self._close(WindowEvent.CUT)] if self._open else []
        if count > 0:
            self.gaps.append(Gap(self.next_seq, self.next_seq + count - 1, reason))
            self.next_seq += count
        return closed

    def tick(self, now_ns: int) -> list[ClosedWindow]:
        """Close the open window when it is ``max_ms`` old."""
        if self._opened_ns is not None and now_ns - self._opened_ns >= self.max_ms * 1_000_000:
            return [self._close(WindowEvent.AGED)]
        return []

    def flush(self) -> list[ClosedWindow]:
        """Close whatever is open (shutdown)."""
        return [self._close(WindowEvent.FLUSH)] if self._open else []

    def _close(self, event: WindowEvent) -> ClosedWindow:
        advance(WINDOW_TRANSITIONS, self._state, event)  # the builder's window is always open
        w = ClosedWindow(tuple(self._open), tuple(self.gaps))
        self._open = []
        self._opened_ns = None
        self.gaps = []
        return w
