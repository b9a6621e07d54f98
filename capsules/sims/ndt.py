"""A SIMULATED inline inspection station: pulse-echo ultrasound, acoustic emission and a gauge.

Not a real instrument and not real data: a small, seeded physics model.

1. Time of flight: t = 2 d / v, d the part's thickness, v the longitudinal velocity of
   steel (5,920 m/s at 20 degC, ~0.6 m/s slower per kelvin).
2. Echo heights in dB: the back wall is calibrated to 80 % FSH at the reference
   attenuation; each part's attenuation (grain size) moves it by -2 (alpha - alpha_ref) d;
   couplant losses subtract from every echo alike, so attenuation from the ratio of two
   back-wall echoes does not see them.
3. A planar flaw of relative area r echoes ~r x the back-wall level in the flaw gate and
   shadows the back wall by r.
4. Acoustic emission: Poisson threshold crossings per second; a growing crack multiplies
   the rate up to ~100 x.
5. Gauge: the 25.000 mm master reads with 2 um repeatability plus any calibration drift.

Faults: ``flaw``, ``couplant_loss``, ``ae_burst``, ``gauge_drift``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from capsules.sims.base import FaultClock

__all__ = ["NdtStation"]


def _pct(db: float) -> float:
    """Echo height in dB re 1 % FSH -> % FSH, clipped at the screen's 110 %."""
    return min(110.0, 10 ** (db / 20))


@dataclass
class NdtStation:
    clock: FaultClock
    seed: int
    t: float = 0.0
    thickness_mm: float = 25.0
    thickness_sd_mm: float = 0.010
    velocity_m_s: float = 5920.0
    velocity_per_k: float = -0.6
    alpha_ref_db_mm: float = 0.030
    alpha_sd_db_mm: float = 0.004
    reference_pct: float = 80.0
    ae_rate_per_s: float = 20.0
    master_mm: float = 25.000
    cycle_s: float = 0.5  # one part (and one gauge reading) every half second
    _rng: np.random.Generator = field(init=False, repr=False)
    _next_part: float = field(init=False, default=0.0, repr=False)
    _next_ae: float = field(init=False, default=0.0, repr=False)
    _last: dict[str, float] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._part()
        self._ae()

    def describe(self) -> str:
        return f"SIMULATED ultrasonic/AE inspection station (physics model, seed {self.seed})"

    def couplant_c(self) -> float:
        # the water warms and cools with the hall over a ten-minute cycle
        return 22.0 + 1.5 * math.sin(2 * math.pi * self.t / 600.0)

    def next(self, dt: float) -> dict[str, float]:
        self.t += dt
        while self.t >= self._next_part:
            self._part()
            self._next_part += self.cycle_s
        while self.t >= self._next_ae:
            self._ae()
            self._next_ae += 1.0
        out = dict(self._last)
        out["couplant_temperature"] = self.couplant_c() + float(self._rng.normal(0, 0.05))
        return out

    def _ae(self) -> None:
        burst = self.clock.level("ae_burst", self.t)
        rate = self.ae_rate_per_s * (1 + 99 * burst)
        self._last["ae_count_rate"] = float(self._rng.poisson(rate))

    def _part(self) -> None:
        rng = self._rng
        temp = self.couplant_c()
        d = float(rng.normal(self.thickness_mm, self.thickness_sd_mm))
        v = self.velocity_m_s + self.velocity_per_k * (temp - 20.0)
        alpha = max(0.005, float(rng.normal(self.alpha_ref_db_mm, self.alpha_sd_db_mm)))
        coupling_db = float(rng.normal(0, 0.5)) + 8.0 * self.clock.level("couplant_loss", self.t)
        r = 0.0
        if rng.random() < 0.7 * self.clock.level("flaw", self.t):
            r = float(rng.uniform(0.15, 0.6))
        ref_db = 20 * math.log10(self.reference_pct)
        backwall_db = ref_db - 2 * (alpha - self.alpha_ref_db_mm) * d - coupling_db
        backwall = _pct(backwall_db) * (1 - r)
        grain_noise = abs(float(rng.normal(0, 2.0))) + 2.0
        flaw_echo = _pct(ref_db - coupling_db) * r
        self._last.update(
            {
                "tof_backwall": 2000.0 * d / v + float(rng.normal(0, 0.002)),
                "backwall_amplitude": backwall,
                "flaw_gate_amplitude": max(grain_noise, flaw_echo),
                "attenuation": alpha + float(rng.normal(0, 0.002)),
                "gauge_master": self.master_mm
                + float(rng.normal(0, 0.002))
                + 0.030 * self.clock.level("gauge_drift", self.t),
            }
        )
