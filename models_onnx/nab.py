"""NAB's window metrics for alarms: window recall, event precision and the standard-profile
score (Lavin & Ahmad 2015; numenta/NAB ``sweeper.py``), re-implemented from the paper's rules.

Detections are alarm *onsets* (an operator is alerted once per alarm run): inside a window
an onset earns ``scaled_sigmoid`` of its position (earliest best), a window without one
costs ``FN_WEIGHT``; an onset outside every window costs ``FP_WEIGHT`` scaled by how far it
lies past the previous window. Rows of the probationary period are not scored. The score is
normalised so that no detection scores 0 and a detection at the start of every window 100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["NabCounts", "nab_counts", "scaled_sigmoid"]

TP_WEIGHT, FP_WEIGHT, FN_WEIGHT = 1.0, 0.11, 1.0  # NAB's "standard" application profile


def scaled_sigmoid(position: float) -> float:
    """NAB's reward: -1 at the far left of a window is 0.987, its right edge 0, past it < 0."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


@dataclass(frozen=True, slots=True)
class NabCounts:
    """Sums over series; pooled with ``+``."""

    windows: int = 0
    detected: int = 0  # windows holding at least one alarmed row
    events: int = 0  # alarm runs that start after the probationary period
    true_events: int = 0  # those that overlap a window
    raw: float = 0.0  # the standard-profile raw score

    def __add__(self, o: NabCounts) -> NabCounts:
        return NabCounts(
            self.windows + o.windows,
            self.detected + o.detected,
            self.events + o.events,
            self.true_events + o.true_events,
            self.raw + o.raw,
        )

    @property
    def window_recall(self) -> float:
        return self.detected / self.windows if self.windows else 1.0

    @property
    def event_precision(self) -> float:
        return self.true_events / self.events if self.events else 1.0

    @property
    def standard_score(self) -> float:
        """100 * (raw - null) / (perfect - null): null misses every window, perfect finds each
        at its left edge."""
        if not self.windows:
            return 0.0
        null, perfect = -FN_WEIGHT * self.windows, TP_WEIGHT * self.windows
        return 100.0 * (self.raw - null) / (perfect - null)

    def as_json(self) -> dict[str, float]:
        return {
            "window_recall": round(self.window_recall, 4),
            "event_precision": round(self.event_precision, 4),
            "standard_score": round(self.standard_score, 2),
        }


def nab_counts(
    alarm: NDArray[np.bool_], windows: Sequence[tuple[int, int]], probation: int
) -> NabCounts:
    """Score one series' alarms (one bool per row) against inclusive window row ranges."""
    a = np.asarray(alarm, dtype=np.bool_)
    prev = np.concatenate([[False], a[:-1]])
    onsets = np.flatnonzero(a & ~prev)
    onsets = onsets[onsets >= probation]
    ends = np.cumsum(np.diff(np.concatenate([[0], a.astype(np.int8), [0]])) == 1)  # run ids
    run_id = ends[:-1] * a  # 0 outside alarms, k inside the k-th run
    scored = [(lo, hi) for lo, hi in windows if hi >= probation]
    in_window = np.zeros(len(a), dtype=np.bool_)
    for lo, hi in scored:
        in_window[lo : hi + 1] = True
    raw, detected = 0.0, 0
    for lo, hi in scored:
        width = hi - lo + 1
        hits = onsets[(onsets >= lo) & (onsets <= hi)]
        if a[lo : hi + 1].any():
            detected += 1
        if len(hits):
            raw += TP_WEIGHT * scaled_sigmoid(-(hi - int(hits[0]) + 1) / width) / _MAX_TP
        else:
            raw -= FN_WEIGHT
    for i in onsets[~in_window[onsets]]:
        before = [(lo, hi) for lo, hi in scored if hi < i]
        if before:
            lo, hi = before[-1]
            position = abs(hi - int(i)) / max(hi - lo, 1)  # NAB: / (width - 1)
        else:
            position = 3.0
        raw += FP_WEIGHT * scaled_sigmoid(position)
    true_runs = set(np.unique(run_id[in_window & a]).tolist())
    true_events = sum(1 for i in onsets if int(run_id[i]) in true_runs)
    return NabCounts(len(scored), detected, len(onsets), true_events, raw)
