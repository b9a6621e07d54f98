"""A SIMULATED distribution centre: a discrete-event model (SimPy) of inbound, storage, outbound.

Not a real site and not real data. Processes, all seeded:

- inbound: trucks arrive as a Poisson process; each waits for a door, unloads pallets at
  ~1.2 min each and puts them away to the SKUs furthest below their order-up-to level;
- storage: 200 SKUs with Pareto-like demand shares and an order-up-to level of
  ``cover_h`` hours of demand; a line asking for more than is in stock is short-picked;
- outbound: orders arrive as a Poisson process with 1-11 lines; one picker per order walks
  (gamma travel, ~45 s a line, slower when many pickers crowd the aisles) and picks
  (~20 s a line); picked orders leave on the next half-hourly departure and are late when
  that departure is after their cut-off (60 min after release).

Faults change the processes, never the readings: ``supplier_delay`` thins the truck
arrivals, ``demand_surge`` raises the order rate, ``dock_congestion`` closes a door and
slows unloading, ``picker_absence`` takes 60 % of the pickers off the floor.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from capsules.sims.base import FaultClock

__all__ = ["LogisticsSim", "SiteParams"]

_HOUR = 3600.0
Proc = Generator[simpy.Event, Any, None]


@dataclass(frozen=True, slots=True)
class SiteParams:
    """Every constant of the site, with its unit (engineering assumptions, see the README)."""

    trucks_per_h: float = 2.5
    pallets_per_truck: tuple[int, int] = (20, 33)
    units_per_pallet: int = 24
    doors: int = 3
    unload_s_per_pallet: float = 72.0
    skus: int = 200
    orders_per_h: float = 40.0
    lines_per_order: tuple[int, int] = (1, 11)
    units_per_line: tuple[int, int] = (1, 8)
    cover_h: float = 2.5  # order-up-to level, hours of each SKU's demand (+ one pallet)
    pickers: int = 8
    travel_mean_s: float = 45.0
    travel_shape: float = 4.0
    crowding: float = 0.04  # travel grows 4 % per other busy picker
    pick_s: float = 20.0
    warmup_s: float = 4 * _HOUR  # run before plant time 0: stock and hourly windows settle
    departure_every_s: float = 1800.0
    cutoff_s: float = 3600.0  # "order within the hour, ships within the hour"
    absent_share: float = 0.6  # of the pickers, when picker_absence is at full severity


@dataclass
class _Window:
    """Events of the last hour: (time, value) pairs, dropped as they age."""

    items: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)

    def add(self, t: float, value: float) -> None:
        self.items.append((t, value))

    def trim(self, now: float) -> None:
        while self.items and self.items[0][0] < now - _HOUR:
            self.items.popleft()

    def count(self) -> int:
        return len(self.items)

    def total(self) -> float:
        return sum(v for _, v in self.items)

    def mean(self, default: float) -> float:
        return self.total() / len(self.items) if self.items else default


@dataclass
class LogisticsSim:
    clock: FaultClock
    seed: int
    params: SiteParams = field(default_factory=SiteParams)
    t: float = 0.0
    env: simpy.Environment = field(init=False, repr=False)
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p = self.params
        self.env = simpy.Environment()
        self._rng = np.random.default_rng(self.seed)
        shares = 1.0 / np.arange(1, p.skus + 1) ** 0.8  # Pareto-like: few SKUs, most picks
        self.share = shares / shares.sum()
        units_per_h = p.orders_per_h * np.mean(p.lines_per_order) * np.mean(p.units_per_line)
        self.target = np.ceil(self.share * units_per_h * p.cover_h) + p.units_per_pallet
        self.stock = self.target.copy()
        self.doors = simpy.Resource(self.env, capacity=p.doors)
        self.pickers = simpy.Resource(self.env, capacity=p.pickers)
        self.waiting_trucks = 0
        self.unloading = 0
        self.open_orders = 0
        self.backlog: list[float] = []  # cut-off times of picked orders awaiting departure
        self.dwell, self.lines, self.travel = _Window(), _Window(), _Window()
        self.short, self.late, self.shipped = _Window(), _Window(), _Window()
        for proc in (self._trucks, self._orders, self._departures):
            self.env.process(proc())
        self.env.run(until=p.warmup_s)
        self.env.process(self._blocker(self.doors, "dock_congestion", 1))
        absent = round(p.pickers * p.absent_share)
        self.env.process(self._blocker(self.pickers, "picker_absence", absent))

    def describe(self) -> str:
        return f"SIMULATED distribution centre (discrete-event model, seed {self.seed})"

    def _level(self, kind: str) -> float:
        # plant time 0 is the end of the warm-up: faults are scheduled after it
        return self.clock.level(kind, self.env.now - self.params.warmup_s)

    def _poisson(self, rate_per_h: Callable[[], float], peak: float) -> Proc:
        """The next arrival of a Poisson process whose rate changes (thinning, Lewis-Shedler);
        ``peak`` (per hour) bounds every rate a fault can set."""
        while True:
            yield self.env.timeout(float(self._rng.exponential(_HOUR / peak)))
            if self._rng.random() < rate_per_h() / peak:
                yield self.env.timeout(0)
                return

    def _trucks(self) -> Proc:
        p = self.params
        while True:
            yield from self._poisson(
                lambda: p.trucks_per_h * (1 - self._level("supplier_delay")), p.trucks_per_h
            )
            self.env.process(self._truck())

    def _truck(self) -> Proc:
        p = self.params
        arrived = self.env.now
        # the supplier ships what the site called off, within one truck's load
        short = float(np.clip(self.target - self.stock, 0, None).sum())
        pallets = int(self._rng.integers(p.pallets_per_truck[0], p.pallets_per_truck[1] + 1))
        pallets = max(1, min(pallets, int(np.ceil(short / p.units_per_pallet))))
        self.waiting_trucks += 1
        with self.doors.request() as door:
            yield door
            self.waiting_trucks -= 1
            self.unloading += 1
            slow = 1 + 2.5 * self._level("dock_congestion")
            per = p.unload_s_per_pallet * slow * float(self._rng.lognormal(0, 0.15))
            yield self.env.timeout(pallets * per)
            self.unloading -= 1
        for _ in range(pallets):  # put-away: to the SKU furthest below its level
            sku = int(np.argmax(self.target - self.stock))
            self.stock[sku] += p.units_per_pallet
        self.dwell.add(self.env.now, (self.env.now - arrived) / 60.0)

    def _orders(self) -> Proc:
        p = self.params
        while True:
            yield from self._poisson(
                lambda: p.orders_per_h * (1 + 1.5 * self._level("demand_surge")),
                2.5 * p.orders_per_h,
            )
            self.env.process(self._order())

    def _order(self) -> Proc:
        p = self.params
        released = self.env.now
        self.open_orders += 1
        n = int(self._rng.integers(p.lines_per_order[0], p.lines_per_order[1] + 1))
        with self.pickers.request() as picker:
            yield picker
            for _ in range(n):
                crowd = 1 + p.crowding * max(0, self.pickers.count - 1)
                travel = float(self._rng.gamma(p.travel_shape, p.travel_mean_s / p.travel_shape))
                travel *= crowd
                yield self.env.timeout(travel + p.pick_s)
                sku = int(self._rng.choice(p.skus, p=self.share))
                want = int(self._rng.integers(p.units_per_line[0], p.units_per_line[1] + 1))
                got = min(want, int(self.stock[sku]))
                self.stock[sku] -= got
                now = self.env.now
                self.lines.add(now, 1.0)
                self.travel.add(now, travel)
                self.short.add(now, 1.0 if got < want else 0.0)
        self.open_orders -= 1
        self.backlog.append(released + p.cutoff_s)

    def _departures(self) -> Proc:
        while True:
            yield self.env.timeout(self.params.departure_every_s)
            now = self.env.now
            for cutoff in self.backlog:
                self.shipped.add(now, 1.0)
                self.late.add(now, 1.0 if now > cutoff else 0.0)
            self.backlog = []

    def _blocker(self, resource: simpy.Resource, kind: str, units: int) -> Proc:
        """Holds ``units`` of a resource while ``kind`` is active (a closed door, absent staff)."""
        while True:
            yield self.env.timeout(60.0)
            if self._level(kind) <= 0:
                continue
            held = [resource.request() for _ in range(units)]
            for r in held:
                yield r
            while self._level(kind) > 0:
                yield self.env.timeout(60.0)
            for r in held:
                resource.release(r)

    def next(self, dt: float) -> dict[str, float]:
        self.t += dt
        now = self.params.warmup_s + self.t
        self.env.run(until=now)
        for w in (self.dwell, self.lines, self.travel, self.short, self.late, self.shipped):
            w.trim(now)
        shipped = self.shipped.count()
        lines = self.lines.count()
        busy_doors = self.unloading / self.params.doors
        return {
            "trucks_waiting": float(self.waiting_trucks),
            "dock_utilisation": 100.0 * busy_doors,
            "inbound_dwell": self.dwell.mean(default=0.0),
            "outbound_backlog": float(len(self.backlog)),
            "late_shipments": self.late.total(),
            "on_time_rate": 100.0 * (1 - self.late.total() / shipped) if shipped else 100.0,
            "stock_on_hand": float(self.stock.sum()),
            "picks_per_hour": float(lines),
            "pick_travel_time": self.travel.mean(default=0.0),
            "open_orders": float(self.open_orders),
            "stockout_lines": self.short.total(),
            "fill_rate": 100.0 * (1 - self.short.total() / lines) if lines else 100.0,
        }
