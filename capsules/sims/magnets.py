"""A SIMULATED rotor-magnet line: pulse magnetiser -> adhesive cure oven -> flux station.

Not a real line and not real data: a small, seeded physics model of sintered NdFeB.

1. Magnetising: the fixture's peak field follows the capacitor voltage, H = k V; the
   fraction of the magnet saturated rises with H as a logistic centred at 1.2 Hcj(20 degC).
2. Temperature: Br(T) = Br20 (1 + alpha (T - 20)), Hcj(T) = Hcj20 (1 + beta (T - 20)).
3. Oven: the part sits at the oven's air temperature on a load line of permeance
   coefficient Pc, J = -(1 + Pc) mu0 H; the intrinsic curve near the knee is
   J(H) = Br(T) (1 - exp((|H| - Hcj(T)) / d)), d = knee_width Hcj(T). The J lost at that
   operating point is lost for good (irreversible), and stays after cooling.
4. Flux station: after cooling for ``cool_s`` the part reads flux = k_flux J20 (1 + alpha
   (T_part - 20)); a crack lowers the flux a little and the pole-centre field more.

Faults: ``under_magnetised`` (the bank's discharge voltage sags), ``cracked_magnet`` (a
share of parts cracked at insertion), ``oven_drift`` (the oven air runs hot, up to 45 K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from capsules.sims.base import FaultClock

__all__ = ["MagnetGrade", "MagnetLine", "operating_loss"]

MU0 = 4e-7 * math.pi  # T m / A


@dataclass(frozen=True, slots=True)
class MagnetGrade:
    """Sintered NdFeB, an SH-like grade (IEC 60404-8-1 / MMPA 0100 ranges)."""

    br20_t: float = 1.30  # remanence at 20 degC
    hcj20_a_per_m: float = 1_600e3  # intrinsic coercivity at 20 degC
    alpha_per_k: float = -0.0012  # reversible coefficient of Br
    beta_per_k: float = -0.0050  # coefficient of Hcj
    knee_width: float = 0.06  # d / Hcj: how square the intrinsic curve is
    permeance: float = 3.0  # Pc of the magnet inside the rotor's iron
    sat_centre: float = 1.2  # logistic centre of saturation, x Hcj20
    sat_width_a_per_m: float = 150e3
    br_tolerance: float = 0.006  # sd of Br between parts (batch spread)


def _br(g: MagnetGrade, t_c: float) -> float:
    return g.br20_t * (1 + g.alpha_per_k * (t_c - 20))


def operating_loss(g: MagnetGrade, t_c: float) -> float:
    """The fraction of J lost (irreversibly) at temperature ``t_c`` on the load line, 0..1."""
    br = _br(g, t_c)
    hcj = max(g.hcj20_a_per_m * (1 + g.beta_per_k * (t_c - 20)), 1e3)
    d = g.knee_width * hcj

    def gap(j: float) -> float:  # J minus the intrinsic curve at the load line's H
        h = j / ((1 + g.permeance) * MU0)
        return j - br * (1 - math.exp(min((h - hcj) / d, 50.0)))

    lo, hi = 0.0, br  # gap(0) < 0 < gap(br): bisection always converges
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    return 1 - lo / br


@dataclass
class MagnetLine:
    """The line's state; ``next(dt)`` advances dt seconds and returns every signal."""

    clock: FaultClock
    seed: int
    grade: MagnetGrade = field(default_factory=MagnetGrade)
    t: float = 0.0
    nominal_voltage_v: float = 2200.0
    field_per_volt: float = 3000.0 / 2200.0  # kA/m per V: H = k V in this fixture
    oven_setpoint_c: float = 150.0
    oven_tau_s: float = 45.0  # the air, not the load: a convection oven recovers in a minute
    ambient_c: float = 22.0
    cool_s: float = 600.0  # conveyor time from oven exit to the flux station
    cool_tau_s: float = 200.0
    flux_per_tesla: float = 90.0 / 1.30  # uWb per T of J at the station's fixture
    field_per_tesla: float = 425.0 / 1.30  # mT at the pole centre per T of J
    cycle_s: float = 5.0  # one part every 5 s (12 a minute)
    _rng: np.random.Generator = field(init=False, repr=False)
    _oven_c: float = field(init=False, repr=False)
    _next_part: float = field(init=False, repr=False)
    _last: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._oven_c = self.oven_setpoint_c
        self._next_part = 0.0
        self._last = {}
        self._part(self.cycle_s)

    def describe(self) -> str:
        return f"SIMULATED NdFeB magnet line (physics model, seed {self.seed})"

    def next(self, dt: float) -> dict[str, float]:
        self.t += dt
        drift = 50.0 * self.clock.level("oven_drift", self.t)
        target = self.oven_setpoint_c + drift
        self._oven_c = target + (self._oven_c - target) * math.exp(-dt / self.oven_tau_s)
        while self.t >= self._next_part:
            cycle = float(self._rng.normal(self.cycle_s, 0.15))
            self._part(cycle)
            self._next_part += cycle
        out = dict(self._last)
        out["oven_temperature"] = self._oven_c + float(self._rng.normal(0, 0.3))
        return out

    def _part(self, cycle_s: float) -> None:
        """A part leaves the magnetiser, the oven and reaches the flux station."""
        g, rng = self.grade, self._rng
        sag = 1.0 - 0.35 * self.clock.level("under_magnetised", self.t)
        volts = self.nominal_voltage_v * sag + float(rng.normal(0, 8.0))
        h = self.field_per_volt * volts * (1 + float(rng.normal(0, 0.005)))  # kA/m
        saturated = 1 / (
            1 + math.exp(-(h * 1e3 - g.sat_centre * g.hcj20_a_per_m) / g.sat_width_a_per_m)
        )
        oven = self._oven_c
        j20 = g.br20_t * (1 + float(rng.normal(0, g.br_tolerance))) * saturated
        j20 *= 1 - operating_loss(g, oven)
        part_c = self.ambient_c + (oven - self.ambient_c) * math.exp(-self.cool_s / self.cool_tau_s)
        part_c += float(rng.normal(0, 0.4))
        reversible = 1 + g.alpha_per_k * (part_c - 20)
        flux_loss = field_loss = 0.0
        if rng.random() < 0.5 * self.clock.level("cracked_magnet", self.t):
            flux_loss = float(rng.uniform(0.03, 0.08))
            field_loss = float(rng.uniform(0.10, 0.25))
        self._last = {
            "capacitor_voltage": volts,
            "magnetising_field": h,
            "part_temperature": part_c,
            "flux": self.flux_per_tesla * j20 * reversible * (1 - flux_loss)
            + float(rng.normal(0, 0.3)),
            "surface_field": self.field_per_tesla * j20 * reversible * (1 - field_loss)
            + float(rng.normal(0, 3.0)),
            "line_rate": 60.0 / cycle_s,
        }
