"""The generic SIMULATED profile of any capsule: each signal a mean-reverting process in its band.

Not a physics model: an Ornstein-Uhlenbeck process per signal around the middle of its
normal band, sharing one latent factor (so a model has correlations to learn), with the
capsule's faults (step, drift, spike, stuck, noise) applied to the signal they name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from capsules.sims.base import FaultClock
from capsules.spec import Signal

__all__ = ["ProfileSim"]

_TAU_S = 5.0  # correlation time of every process
_SHARED = 0.6  # weight of the latent factor common to all signals
_SPIKE_RATE_PER_S = 1.0


@dataclass
class ProfileSim:
    signals: Sequence[Signal]
    clock: FaultClock
    seed: int
    t: float = 0.0
    _rng: np.random.Generator = field(init=False, repr=False)
    _z: NDArray[np.float64] = field(init=False, repr=False)
    _common: float = field(init=False, default=0.0, repr=False)
    _held: dict[str, float] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._z = np.zeros(len(self.signals))

    def describe(self) -> str:
        return f"SIMULATED generic profile ({len(self.signals)} signals, seed {self.seed})"

    def next(self, dt: float) -> dict[str, float]:
        self.t += dt
        decay = math.exp(-dt / _TAU_S)
        kick = math.sqrt(1 - decay**2)
        self._common = decay * self._common + kick * float(self._rng.normal())
        self._z = decay * self._z + kick * self._rng.normal(size=len(self.signals))
        out = {}
        for i, s in enumerate(self.signals):
            lo, hi = s.normal
            width = hi - lo
            sd = width / 8.0  # +/- 4 sd fill the normal band
            mix = _SHARED * self._common + math.sqrt(1 - _SHARED**2) * float(self._z[i])
            noise = 1.0 + 4.0 * self.clock.level("noise", self.t, s.name)
            v = (lo + hi) / 2 + sd * mix * noise
            v += 0.6 * width * self.clock.level("step", self.t, s.name)
            v += 0.8 * width * self.clock.level("drift", self.t, s.name)
            spike = self.clock.level("spike", self.t, s.name)
            if spike and self._rng.random() < _SPIKE_RATE_PER_S * dt:
                v += width * spike * (1.0 if self._rng.random() < 0.5 else -1.0)
            if self.clock.level("stuck", self.t, s.name):
                v = self._held.setdefault(s.name, v)
            else:
                self._held.pop(s.name, None)
            out[s.name] = min(max(v, s.range[0]), s.range[1])
        return out
