"""A SIMULATED centrifugal pump loop: a small, seeded physics model stepped with explicit dt.

Not a real pump. Signals are named like SKAB's test bed (Accelerometer1RMS, ..., Volume Flow
RateRMS) so models and dashboards read both; faults follow a schedule of (start, duration).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_FAULTS", "SIGNALS", "Fault", "PumpPlant"]

# signal name -> unit, in the order the Modbus register map and the models use
SIGNALS: dict[str, str] = {
    "Accelerometer1RMS": "g",
    "Accelerometer2RMS": "g",
    "Current": "A",
    "Pressure": "bar",
    "Temperature": "degC",  # motor / bearing housing (SKAB's "Temperature")
    "Thermocouple": "degC",  # fluid (SKAB's "Thermocouple")
    "Voltage": "V",
    "Volume Flow RateRMS": "l/min",
}

FAULT_KINDS = (
    "valve_closing",
    "cavitation",
    "bearing_wear",
    "sensor_stuck",
    "sensor_spike",
    "sensor_drift",
)

_RHO, _G = 998.0, 9.81  # water, kg/m^3 and m/s^2


@dataclass(frozen=True, slots=True)
class Fault:
    """``kind`` active from ``start_s`` for ``duration_s`` with 0..1 ``severity``."""

    start_s: float
    duration_s: float
    kind: str
    severity: float = 1.0
    signal: str = "Pressure"  # for sensor faults

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {FAULT_KINDS}")
        if not 0.0 <= self.severity <= 1.0 or self.duration_s <= 0:
            raise ValueError("severity must be 0..1 and duration positive")

    def level(self, t: float) -> float:
        """0 outside the fault; inside, ramps up over the first fifth of the duration."""
        if not self.start_s <= t < self.start_s + self.duration_s:
            return 0.0
        ramp = max(self.duration_s / 5, 1e-9)
        return self.severity * min(1.0, (t - self.start_s) / ramp)


# a demo that shows each plant fault within its first ten minutes
DEFAULT_FAULTS: tuple[Fault, ...] = (
    Fault(120, 60, "valve_closing", 0.7),
    Fault(260, 60, "cavitation", 0.8),
    Fault(400, 150, "bearing_wear", 1.0),
    Fault(600, 20, "sensor_spike", 1.0, "Pressure"),
)


@dataclass
class PumpPlant:
    """State of the loop; ``step(dt)`` advances it and returns one value per signal.

    Hydraulics: pump curve H_p = H0 n^2 - a Q^2 meets the system curve
    H_s = H_st + b Q^2 / v^2 (valve opening v); solving for Q gives the operating point.
    Power: P_h = rho g Q H, P_shaft = P_h / eta(Q) with a parabolic efficiency around the
    best efficiency point; motor current I = P_shaft / (sqrt(3) V pf eta_m) (3-phase).
    Thermal: first-order lags T' = (T_eq - T) / tau for fluid and bearing temperatures.
    """

    seed: int = 0
    faults: Sequence[Fault] = DEFAULT_FAULTS
    speed: float = 1.0  # n, fraction of nominal speed
    valve: float = 1.0  # v, 0..1
    t: float = 0.0
    # start at the nominal operating point's thermal equilibrium (found by stepping the
    # fault-free model for an hour), so a fresh plant shows no warm-up transient
    fluid_c: float = 25.66
    bearing_c: float = 94.77
    _rng: random.Random = field(init=False)
    _stuck: dict[str, float] = field(init=False, default_factory=dict)

    H0: float = 40.0  # shut-off head at nominal speed, m
    a: float = 4.0e6  # pump curve coefficient, m / (m^3/s)^2
    H_st: float = 5.0  # static head, m
    b: float = 3.9e6  # system curve coefficient at full opening
    q_bep: float = 2.1e-3  # best efficiency flow, m^3/s (~126 l/min)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _fault(self, kind: str) -> float:
        return max((f.level(self.t) for f in self.faults if f.kind == kind), default=0.0)

    def step(self, dt: float) -> dict[str, float]:
        if dt <= 0:
            raise ValueError("dt must be positive")
        self.t += dt
        g = self._rng.gauss
        closing = self._fault("valve_closing")
        cav = self._fault("cavitation")
        wear = self._fault("bearing_wear")
        v = max(0.05, self.valve * (1.0 - 0.9 * closing))
        head_avail = self.H0 * self.speed**2 - self.H_st
        q = math.sqrt(max(head_avail, 0.0) / (self.a + self.b / v**2))  # m^3/s
        if cav:  # vapour bubbles: flow drops and oscillates
            q *= 1.0 - 0.25 * cav + 0.08 * cav * math.sin(2 * math.pi * 0.7 * self.t)
        head = self.H0 * self.speed**2 - self.a * q**2
        eta = max(0.2, 0.78 * (1.0 - ((q - self.q_bep) / self.q_bep) ** 2))
        p_shaft = _RHO * _G * q * head / eta + 150.0 * (1 + 2 * wear)  # + bearing friction
        volts = 230.0 + g(0, 3.0)
        amps = p_shaft / (math.sqrt(3) * volts * 0.85 * 0.9)
        # thermal lags: fluid warms with pump losses, bearing with friction and wear
        fluid_eq = 25.0 + 0.004 * p_shaft * (1 - eta)
        bearing_eq = 80.0 + 0.02 * p_shaft + 25.0 * wear
        self.fluid_c += (fluid_eq - self.fluid_c) * min(1.0, dt / 600.0)
        self.bearing_c += (bearing_eq - self.bearing_c) * min(1.0, dt / 60.0)
        flow_lpm = q * 60_000.0
        vib = 0.2 + 0.02 * (flow_lpm / 126.0) ** 2
        values = {
            "Accelerometer1RMS": vib + 0.25 * cav + 0.15 * wear + g(0, 0.005),
            "Accelerometer2RMS": vib * 1.25 + 0.3 * cav + 0.25 * wear + g(0, 0.005),
            "Current": amps + g(0, 0.03),
            "Pressure": _RHO * _G * head / 1e5 + g(0, 0.02),
            "Temperature": self.bearing_c + g(0, 0.2),
            "Thermocouple": self.fluid_c + g(0, 0.1),
            "Voltage": volts,
            "Volume Flow RateRMS": flow_lpm + g(0, 0.8),
        }
        return self._sensor_faults(values)

    def _sensor_faults(self, values: dict[str, float]) -> dict[str, float]:
        for f in self.faults:
            level = f.level(self.t)
            if f.kind == "sensor_stuck":
                if level:
                    values[f.signal] = self._stuck.setdefault(f.signal, values[f.signal])
                else:
                    self._stuck.pop(f.signal, None)
            elif level and f.kind == "sensor_spike" and self._rng.random() < 0.2:
                values[f.signal] *= 1.0 + 3.0 * level
            elif level and f.kind == "sensor_drift":
                values[f.signal] += level * 0.02 * (self.t - f.start_s)
        return values
