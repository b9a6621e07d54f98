"""The window builder: a pure state machine that numbers readings and cuts windows.

A window closes at ``max_readings`` readings or ``max_ms`` after its first reading,
whichever comes first. Time is passed in; nothing here reads a clock or touches I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.connectors.base import Sample
from attestation.reading import Reading

__all__ = ["ClosedWindow", "WindowBuilder", "merge_windows"]


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """Readings with consecutive seqs, ready to be scored, signed and committed."""

    readings: tuple[Reading, ...]

    @property
    def first_seq(self) -> int:
        return self.readings[0].seq

    @property
    def last_seq(self) -> int:
        return self.readings[-1].seq


def merge_windows(windows: Iterable[ClosedWindow]) -> ClosedWindow:
    """Join consecutive windows into one (the signer fell behind: one signature for all)."""
    readings: list[Reading] = []
    for w in windows:
        if readings and w.first_seq != readings[-1].seq + 1:
            raise ValueError(f"window at seq {w.first_seq} does not follow {readings[-1].seq}")
        readings.extend(w.readings)
    if not readings:
        raise ValueError("nothing to merge")
    return ClosedWindow(tuple(readings))


@dataclass
class WindowBuilder:
    """Assigns gap-free seqs from ``next_seq`` and cuts windows by count or age."""

    max_readings: int
    max_ms: int
    next_seq: int = 0
    _open: list[Reading] = field(default_factory=list)
    _opened_ns: int | None = None

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
            self._open.append(Reading(self.next_seq, s.ts_ns, s.signal, s.value, s.unit, s.quality))
            self.next_seq += 1
            if len(self._open) >= self.max_readings:
                closed.append(self._close())
        return closed

    def tick(self, now_ns: int) -> list[ClosedWindow]:
        """Close the open window when it is ``max_ms`` old."""
        if self._opened_ns is not None and now_ns - self._opened_ns >= self.max_ms * 1_000_000:
            return [self._close()]
        return []

    def flush(self) -> list[ClosedWindow]:
        """Close whatever is open (shutdown)."""
        return [self._close()] if self._open else []

    def _close(self) -> ClosedWindow:
        w = ClosedWindow(tuple(self._open))
        self._open = []
        self._opened_ns = None
        return w
