"""The window builder: pure, no I/O.

The builder numbers readings gap-free and closes a window at ``max_readings`` readings or
``max_ms`` after its first reading, whichever comes first, or before its statistics would
pass the proof limits (ADR 0016); time is passed in, never read. It also collects the
connectors' source gaps, merges contiguous ranges per source, and hands each closing window
the ones not yet stated.

A window has one state of its own, open, and the builder holds exactly one: closing it hands
a ``ClosedWindow`` to the runtime, which seals and commits it in one step (``agent/sealer.py``,
``Spool.commit``); from then on it lives in the outbox (``agent/outbox.py``). There is no
window state machine beyond that: the table that named SIGNED and COMMITTED was never
driven (code review, change 4) and was removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.connectors.base import QUALITY_BAD, Sample
from attestation.microproof import MICROPROOF_LIMITS, Gap, ProofLimits, RecoveryRecord, SourceGap
from attestation.reading import Reading, new_reading

__all__ = [
    "ClosedWindow",
    "WindowBuilder",
    "bad_quality",
    "merge_windows",
    "runs",
    "stats_cost",
]


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """Readings with consecutive seqs, ready to be scored, signed and committed.

    ``gaps`` are the signed gap records that precede the first reading (seqs that were
    handed out but whose readings were lost: a crash, a queue overflow). ``source_gaps``:
    sources that were silent, each range stated once (key 16). ``recovery`` marks the first
    window sealed after a start that found the journal unfinished (key 17, ADR 0017).
    """

    readings: tuple[Reading, ...]
    gaps: tuple[Gap, ...] = ()
    source_gaps: tuple[SourceGap, ...] = ()
    recovery: RecoveryRecord | None = None

    @property
    def first_seq(self) -> int:
        return self.readings[0].seq

    @property
    def last_seq(self) -> int:
        return self.readings[-1].seq


def merge_windows(windows: Iterable[ClosedWindow]) -> ClosedWindow:
    """Join consecutive windows into one (the signer fell behind: one signature for all).

    Only the first window may carry gap records (the hub checks that a proof's leaves
    run without a hole from its first seq, so a gap always starts a new proof) or a
    recovery record.
    """
    readings: list[Reading] = []
    first: ClosedWindow | None = None
    source_gaps: list[SourceGap] = []
    for w in windows:
        if readings and (w.gaps or w.recovery or w.first_seq != readings[-1].seq + 1):
            raise ValueError(f"window at seq {w.first_seq} does not follow {readings[-1].seq}")
        first = first or w
        readings.extend(w.readings)
        source_gaps.extend(w.source_gaps)
    if first is None:
        raise ValueError("nothing to merge")
    return ClosedWindow(tuple(readings), first.gaps, _coalesce(source_gaps), first.recovery)


def _coalesce(gaps: Iterable[SourceGap]) -> tuple[SourceGap, ...]:
    """Join ranges of one source and reason that touch (one window stated where the last
    left off); the result is ordered by first time, then source."""
    last: dict[tuple[str, str], SourceGap] = {}
    out: list[SourceGap] = []
    for g in sorted(gaps, key=lambda g: (g.first_ts_ns, g.source, g.reason)):
        key = (g.source, g.reason)
        prev = last.get(key)
        if prev is not None and g.first_ts_ns <= prev.last_ts_ns + 1:
            joined = SourceGap(
                g.source, prev.first_ts_ns, max(prev.last_ts_ns, g.last_ts_ns), g.reason
            )
            out[out.index(prev)] = last[key] = joined
            continue
        last[key] = g
        out.append(g)
    return tuple(sorted(out, key=lambda g: (g.first_ts_ns, g.source, g.reason)))


def stats_cost(signal: str) -> int:
    """Upper bound of one signal's bytes in key 12: its name, the array head, a uint and
    four float64s (``ProofLimits.max_stats_bytes`` is spent in these)."""
    return len(signal.encode()) + 3 + 1 + 9 + 4 * 9


_COSTS: dict[str, int] = {}  # signal names repeat every window: encode each name once
_COSTS_MAX = 1 << 16  # bound the memo all the same (a gateway has far fewer points)


def _cost(signal: str) -> int:
    cost = stats_cost(signal)
    if len(_COSTS) < _COSTS_MAX:
        _COSTS[signal] = cost
    return cost


@dataclass
class _Budget:
    """What one proof has spent of ``ProofLimits`` while windows are joined into it."""

    limits: ProofLimits
    readings: int = 0
    signals: set[str] = field(default_factory=set)
    stats_bytes: int = 0
    source_gaps: int = 0
    source_gap_bytes: int = 0

    def fits(self, w: ClosedWindow) -> bool:
        lim = self.limits
        new = {r.signal for r in w.readings} - self.signals
        return (
            self.readings + len(w.readings) <= lim.max_leaves
            and len(self.signals) + len(new) <= lim.max_signals
            and self.stats_bytes + sum(map(stats_cost, new)) <= lim.max_stats_bytes
            and self.source_gaps + len(w.source_gaps) <= lim.max_source_gaps
            and self.source_gap_bytes + sum(g.encoded_size() for g in w.source_gaps)
            <= lim.max_source_gap_bytes
        )

    def spend(self, w: ClosedWindow) -> None:
        new = {r.signal for r in w.readings} - self.signals
        self.readings += len(w.readings)
        self.signals |= new
        self.stats_bytes += sum(map(stats_cost, new))
        self.source_gaps += len(w.source_gaps)
        self.source_gap_bytes += sum(g.encoded_size() for g in w.source_gaps)


def runs(
    windows: Iterable[ClosedWindow], limits: ProofLimits = MICROPROOF_LIMITS
) -> list[list[ClosedWindow]]:
    """Split closed windows into runs that ``merge_windows`` can join: a gap record or a
    recovery record starts a run, and so does a window that would take the joined proof
    past ``limits``."""
    out: list[list[ClosedWindow]] = []
    budget = _Budget(limits)
    spent: ClosedWindow | None = None  # counted only once a window follows it: the last
    for w in windows:  # one (nearly always the only one) never needs its pass over readings
        if spent is not None:
            budget.spend(spent)
        if not out or w.gaps or w.recovery or not budget.fits(w):
            out.append([w])
            budget = _Budget(limits)
        else:
            out[-1].append(w)
        spent = w
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
    next window to close carries them. A window is also closed before a new signal would
    take its statistics past ``limits`` (so a gateway of any size uploads, ADR 0016).

    Source gaps (``note``) are merged per source and reason while the window is open: a
    connector reports an outage as ``[since, now]`` again and again, and the window states
    it once. What an earlier window stated is not stated again (``_stated``); a window that
    closes takes what fits its budget and the rest waits for the next one.

    ``recovery`` is a recovery record the next window carries (ADR 0017); ``unjournaled``
    holds the numbered readings the journal has not taken yet (``take_unjournaled``).
    """

    max_readings: int
    max_ms: int
    next_seq: int = 0
    gaps: list[Gap] = field(default_factory=list)
    limits: ProofLimits = MICROPROOF_LIMITS
    recovery: RecoveryRecord | None = None
    unjournaled: list[Reading] = field(default_factory=list)
    _open: list[Reading] = field(default_factory=list)
    _opened_ns: int | None = None
    _signals: set[str] = field(default_factory=set)
    _stats_bytes: int = 0
    _source_gaps: dict[tuple[str, str], list[SourceGap]] = field(default_factory=dict)
    _stated: dict[tuple[str, str], int] = field(default_factory=dict)  # -> last ts stated

    @property
    def open_count(self) -> int:
        return len(self._open)

    def add(self, samples: Iterable[Sample], now_ns: int) -> list[ClosedWindow]:
        """Number ``samples`` and return every window that filled up."""
        closed: list[ClosedWindow] = []
        closed.extend(self.tick(now_ns))
        max_signals, max_bytes = self.limits.max_signals, self.limits.max_stats_bytes
        signals, out, seq, fresh = self._signals, self._open, self.next_seq, self.unjournaled
        max_readings = self.max_readings
        for sig, v, unit, ts_ns, quality in samples:  # a Sample is a named tuple
            if sig not in signals:  # a new signal in this window: does its statistics fit?
                cost = _COSTS.get(sig) or _cost(sig)
                if out and (len(signals) >= max_signals or self._stats_bytes + cost > max_bytes):
                    self.next_seq = seq
                    closed.append(self._close())
                    signals, out = self._signals, self._open
                signals.add(sig)
                self._stats_bytes += cost
            if self._opened_ns is None:
                self._opened_ns = now_ns
            # NaN and the infinities are Bad whatever the source said (v - v is 0 otherwise)
            q = quality if isinstance(v, str) or v - v == 0 else bad_quality(quality)
            reading = new_reading(seq, ts_ns, sig, v, unit, q)
            out.append(reading)
            fresh.append(reading)
            seq += 1
            if len(out) >= max_readings:
                self.next_seq = seq
                closed.append(self._close())
                signals, out = self._signals, self._open
        self.next_seq = seq
        return closed

    def note(self, gaps: Iterable[SourceGap]) -> None:
        """Take source gaps from a connector; contiguous ranges of one source merge."""
        for g in gaps:
            key = (g.source, g.reason)
            first = g.first_ts_ns
            stated = self._stated.get(key)
            if stated is not None and first <= stated:
                if g.last_ts_ns <= stated:
                    continue  # an earlier window said so already
                first = stated + 1
            ranges = self._source_gaps.setdefault(key, [])
            if ranges and first <= ranges[-1].last_ts_ns + 1:
                prev = ranges[-1]
                if g.last_ts_ns > prev.last_ts_ns:
                    ranges[-1] = SourceGap(g.source, prev.first_ts_ns, g.last_ts_ns, g.reason)
                continue
            ranges.append(SourceGap(g.source, first, g.last_ts_ns, g.reason))

    @property
    def pending_source_gaps(self) -> int:
        return sum(map(len, self._source_gaps.values()))

    def unstated_source_gaps(self) -> list[SourceGap]:
        """Source gaps still waiting for a window (every source silent since the last one):
        at a stop they cannot be signed, only logged (ADR 0016, limits)."""
        return sorted(
            (g for ranges in self._source_gaps.values() for g in ranges),
            key=lambda g: (g.first_ts_ns, g.source, g.reason),
        )

    def _take_source_gaps(self) -> tuple[SourceGap, ...]:
        """The pending source gaps that fit one proof (oldest first); the rest stay."""
        pending = self.unstated_source_gaps()
        if not pending:
            return ()
        taken: list[SourceGap] = []
        size = 0
        for g in pending:
            if (
                len(taken) == self.limits.max_source_gaps
                or size + g.encoded_size() > self.limits.max_source_gap_bytes
            ):
                break
            taken.append(g)
            size += g.encoded_size()
        self._source_gaps = {}
        for g in pending[len(taken) :]:
            self._source_gaps.setdefault((g.source, g.reason), []).append(g)
        if len(self._stated) > 8 * self.limits.max_source_gaps:
            self._stated.clear()  # sources are configured, so this only bounds a bug
        for g in taken:
            key = (g.source, g.reason)
            self._stated[key] = max(self._stated.get(key, g.last_ts_ns), g.last_ts_ns)
        return tuple(taken)

    def take_unjournaled(self) -> list[Reading]:
        """The numbered readings the journal has not taken yet, oldest first; now taken."""
        batch, self.unjournaled = self.unjournaled, []
        return batch

    def tick(self, now_ns: int) -> list[ClosedWindow]:
        """Close the open window when it is ``max_ms`` old."""
        if self._opened_ns is not None and now_ns - self._opened_ns >= self.max_ms * 1_000_000:
            return [self._close()]
        return []

    def flush(self) -> list[ClosedWindow]:
        """Close whatever is open (shutdown)."""
        return [self._close()] if self._open else []

    def _close(self) -> ClosedWindow:
        w = ClosedWindow(
            tuple(self._open), tuple(self.gaps), self._take_source_gaps(), self.recovery
        )
        self._open = []
        self._opened_ns = None
        self.gaps = []
        self.recovery = None
        self._signals = set()
        self._stats_bytes = 0
        return w
