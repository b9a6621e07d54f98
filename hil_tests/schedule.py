"""A simulated plant's fault schedule told in one line: what the plant is doing now.

The demo's live table shows it beside the agent's counts, so anomalies are expected when
they come: the pump's demo (``factoryops.demo``) and every capsule's (``capsules.pilot``)
tell their own fault types through this one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ScheduledFault", "plant_now"]


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    """One fault of a schedule: from ``start_s`` for ``duration_s`` plant seconds."""

    start_s: float
    duration_s: float
    words: str  # what it is, as the table says it ("bearing wear", "drift on Pressure")

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s


def plant_now(faults: Sequence[ScheduledFault], t_s: float, recovering: str = "") -> str:
    """What the plant is doing at plant time ``t_s``: a running fault, else ``recovering``
    (a fault's after-effect the plant's model still carries, said by the caller), else
    normal operation; with the time to the next fault while one is still to come."""
    for f in faults:
        if f.active(t_s):
            return f"FAULT: {f.words}, expect anomalies"
    upcoming = [f.start_s for f in faults if f.start_s > t_s]
    if not recovering and not upcoming:
        return "normal operation (the fault schedule is over)"
    now = recovering or "normal operation"
    return f"{now}; next fault in {min(upcoming) - t_s:,.0f} s" if upcoming else now
