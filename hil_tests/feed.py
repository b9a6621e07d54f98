"""The plant's live values: a source (the SIMULATED model or a SKAB replay) stepped on a timer.

Every protocol face (Modbus, OPC UA, MQTT) reads the same ``PlantFeed``, so they all serve
the same sample at the same moment; the sources themselves are pure and take an explicit dt.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import statistics
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hil_tests.errors import HilError
from hil_tests.plant import PumpPlant
from hil_tests.skab import SkabRow, read_skab

__all__ = ["FeedLimits", "ModelSource", "PlantFeed", "PlantSample", "ReplaySource", "ValueSource"]

log = logging.getLogger(__name__)


class ValueSource(Protocol):
    """Something that yields one value per signal for each step of ``dt`` plant seconds."""

    def next(self, dt: float) -> dict[str, float]: ...

    def describe(self) -> str: ...


@dataclass
class ModelSource:
    """The SIMULATED pump (``hil_tests.plant``)."""

    plant: PumpPlant

    def next(self, dt: float) -> dict[str, float]:
        return self.plant.step(dt)

    def describe(self) -> str:
        return f"simulated pump model (seed {self.plant.seed}, {len(self.plant.faults)} faults)"


@dataclass
class ReplaySource:
    """A SKAB file's rows in file order, at the pace of their timestamps, looping at the end.

    ``index`` is the row last served (0-based), so a test can name which row it expects.
    """

    rows: Sequence[SkabRow]
    label: str = "replay"
    index: int = field(init=False, default=-1)
    _offsets: list[float] = field(init=False, repr=False)
    _cycle_s: float = field(init=False, repr=False)
    _elapsed: float = field(init=False, default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self.rows:
            raise HilError(f"{self.label} has no rows to replay", hint="pick a non-empty file")
        t0 = self.rows[0].ts
        self._offsets = [(r.ts - t0).total_seconds() for r in self.rows]
        steps = [b - a for a, b in zip(self._offsets, self._offsets[1:], strict=False)]
        if any(s < 0 for s in steps):
            bad = next(r for r, s in zip(self.rows[1:], steps, strict=False) if s < 0)
            raise HilError(
                f"{self.label}:{bad.line}: timestamp goes backwards",
                hint="a replay needs rows in time order",
            )
        # the loop closes one typical row interval after the last row
        typical = statistics.median(steps) if steps else 1.0
        self._cycle_s = self._offsets[-1] + (typical or 1.0)

    @classmethod
    def from_file(cls, path: Path) -> ReplaySource:
        return cls(list(read_skab(path)), label=str(path))

    def next(self, dt: float) -> dict[str, float]:
        at = self._elapsed % self._cycle_s
        self.index = bisect.bisect_right(self._offsets, at) - 1
        self._elapsed += dt
        return dict(self.rows[self.index].values)

    def describe(self) -> str:
        return f"replay of {self.label} ({len(self.rows)} rows, looping)"


@dataclass(frozen=True, slots=True)
class PlantSample:
    """What every face serves right now: step number, plant time (s) and values."""

    step: int
    t_s: float
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """Bounds on the stepping rate: faster is pointless for a 10 Hz demo, slower looks dead."""

    min_period_s: float = 0.005  # 200 Hz: above any poll rate the tests use
    max_period_s: float = 60.0
    max_speed: float = 1000.0  # plant seconds per wall second


@dataclass
class PlantFeed:
    """Steps ``source`` every ``period_s`` wall seconds by ``period_s * speed`` plant seconds.

    The first sample exists before ``run`` starts, so a face never serves zeros.
    """

    source: ValueSource
    period_s: float = 0.1
    speed: float = 1.0
    limits: FeedLimits = field(default_factory=FeedLimits)
    sample: PlantSample = field(init=False)
    _tick: asyncio.Event = field(init=False, default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        lim = self.limits
        if not lim.min_period_s <= self.period_s <= lim.max_period_s:
            raise HilError(
                f"period {self.period_s} s is outside {lim.min_period_s}..{lim.max_period_s} s"
            )
        if not 0 < self.speed <= lim.max_speed:
            raise HilError(f"speed {self.speed} is outside (0, {lim.max_speed}]")
        self.sample = PlantSample(0, 0.0, {})
        self.tick()

    @property
    def dt(self) -> float:
        """Plant seconds per step."""
        return self.period_s * self.speed

    def tick(self) -> PlantSample:
        """Advance one step now and wake every subscriber (also used by tests, no timer)."""
        values = self.source.next(self.dt)
        self.sample = PlantSample(self.sample.step + 1, self.sample.t_s + self.dt, values)
        # swap the event so a subscriber waits for the next tick, never a stale one
        done, self._tick = self._tick, asyncio.Event()
        done.set()
        return self.sample

    async def run(self) -> None:
        """Tick on a fixed grid of wall time until cancelled (no drift, no catch-up bursts)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.period_s
            delay = next_at - loop.time()
            if delay < -self.period_s:  # fell behind (a stalled loop): restart the grid
                log.warning("plant feed fell %.3f s behind; skipping ahead", -delay)
                next_at = loop.time()
            await asyncio.sleep(max(0.0, delay))
            self.tick()

    async def updates(self, after: int | None = None) -> AsyncIterator[PlantSample]:
        """Each sample newer than step ``after`` (default: the current one), as it is made.

        A slow reader skips samples, never queues them; a tick that happens while the reader
        is busy (between ``after`` and its next wait) is not lost.
        """
        last = self.sample.step if after is None else after
        while True:
            tick = self._tick  # taken before the check: a tick in between sets this one
            if self.sample.step > last:
                last = self.sample.step
                yield self.sample
                continue
            await tick.wait()
