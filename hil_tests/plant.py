"""A SIMULATED centrifugal pump loop: a small, seeded physics model stepped with an explicit dt.

Not a real pump and not real data. Signals carry SKAB's column names so the same models and
views read both; plant faults and sensor faults follow a schedule of ``Fault`` entries.

How to read it (top to bottom, ten minutes):

1. ``PumpParams``: every constant, with its unit. Defaults put the operating point near
   the SKAB test bed's (about 125 l/min, 230 V, vibration about 0.2 g RMS, fluid near 27 degC,
   motor housing near 87 degC); pressure (2.2 bar) and current (4 A) are this model's own.
2. ``operating_point``: the hydraulics, a pure function of valve, speed and cavitation.
3. ``PumpPlant.step(dt)``: faults -> hydraulics -> motor -> heat -> vibration -> sensors.

Equations (each is cited again where it is used):

- Pump curve with the affinity laws (Q ~ n, H ~ n^2): ``H_p = H0 n^2 - a Q^2``.
- System curve through the valve (opening v): ``H_s = H_st + (k_pipe + k_v / v^2) Q^2``;
  the valve term follows from ``dp = (rho/2) (Q / (C A v))^2`` for a linear valve.
- Operating point ``H_p = H_s``: ``Q = sqrt((H0 n^2 - H_st) / (a + k_pipe + k_v / v^2))``.
- Efficiency, parabolic around the best efficiency point (BEP, which moves as Q_bep n):
  ``eta = eta_max (1 - ((Q - Q_bep n) / (Q_bep n))^2)``.
- Power: ``P_h = rho g Q H``; shaft ``P_s = P_h / eta + P_friction``; motor input
  ``P_in = P_s / eta_m``; current ``I = P_in / (V pf)`` (single phase) or
  ``P_in / (sqrt(3) V pf)`` (three phase, V line to line).
- Cavitation: ``NPSH_a = (p_atm - p_v(T)) / (rho g) + z_s - h_s`` against
  ``NPSH_r = r0 + r2 (Q / Q_bep)^2``; p_v from the Antoine equation for water.
- Heat, first-order lags solved exactly over dt: ``T += (T_eq - T)(1 - exp(-dt / tau))``.
  Fluid: all shaft power ends as heat in the closed loop, ``T_eq = T_amb + P_s / UA``.
  Motor housing and bearing: ``T_eq = T_amb + (P_friction + P_motor_loss) / G``.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DEFAULT_FAULTS",
    "PLANT_FAULTS",
    "SENSOR_FAULTS",
    "SIGNALS",
    "Fault",
    "FaultKind",
    "OperatingPoint",
    "PumpParams",
    "PumpPlant",
    "operating_point",
]

# signal name -> unit, in the order the register map and the models use
SIGNALS: Mapping[str, str] = MappingProxyType(
    {
        "Accelerometer1RMS": "g",  # on the pump casing
        "Accelerometer2RMS": "g",  # on the motor's drive-end bearing
        "Current": "A",
        "Pressure": "bar",  # discharge, gauge
        "Temperature": "degC",  # motor housing / bearing (SKAB: "engine body")
        "Thermocouple": "degC",  # fluid in the loop
        "Voltage": "V",
        "Volume Flow RateRMS": "l/min",
    }
)

_RHO = 998.0  # water at 20-25 degC, kg/m^3
_G = 9.81  # m/s^2
_CP_WATER = 4186.0  # J/(kg K)
_P_ATM = 101_325.0  # Pa
_M3S_TO_LPM = 60_000.0


class FaultKind(enum.StrEnum):
    """What goes wrong: the first three change the physics, the rest only a sensor."""

    VALVE_CLOSING = "valve_closing"  # discharge valve creeps shut
    CAVITATION = "cavitation"  # suction side starves (blocked strainer, low tank)
    BEARING_WEAR = "bearing_wear"  # friction grows: heat and vibration
    SENSOR_STUCK = "sensor_stuck"  # the reading freezes at its value at onset
    SENSOR_SPIKE = "sensor_spike"  # random short outliers
    SENSOR_DRIFT = "sensor_drift"  # a growing offset (calibration loss)


PLANT_FAULTS = frozenset({FaultKind.VALVE_CLOSING, FaultKind.CAVITATION, FaultKind.BEARING_WEAR})
SENSOR_FAULTS = frozenset(set(FaultKind) - PLANT_FAULTS)

# bearing wear is progressive, so it ramps over its whole duration; the others set in
# over the first fifth (a valve takes seconds to creep shut, not an instant)
_RAMP_FRACTION = {FaultKind.BEARING_WEAR: 1.0}
_DEFAULT_RAMP_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class Fault:
    """``kind`` active from ``start_s`` for ``duration_s`` at 0..1 ``severity``.

    ``signal`` names the sensor a sensor fault hits; plant faults ignore it.
    """

    start_s: float
    duration_s: float
    kind: FaultKind
    severity: float = 1.0
    signal: str = "Pressure"

    def __post_init__(self) -> None:
        # accept plain strings from callers and files, keep the enum inside
        object.__setattr__(self, "kind", FaultKind(self.kind))
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"fault start_s must be >= 0, got {self.start_s}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"fault duration_s must be > 0, got {self.duration_s}")
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"fault severity must be within 0..1, got {self.severity}")
        if self.signal not in SIGNALS:
            raise ValueError(f"fault signal {self.signal!r} is not one of {list(SIGNALS)}")

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.start_s + self.duration_s

    def level(self, t: float) -> float:
        """0 outside the fault; inside, ramps from 0 to ``severity``."""
        if not self.active(t):
            return 0.0
        ramp = self.duration_s * _RAMP_FRACTION.get(self.kind, _DEFAULT_RAMP_FRACTION)
        return self.severity * min(1.0, (t - self.start_s) / ramp)


# A demo sees each fault within its first six minutes, one at a time, with quiet gaps
# between them so an anomaly view shows where each begins and ends.
DEFAULT_FAULTS: tuple[Fault, ...] = (
    Fault(20, 40, FaultKind.VALVE_CLOSING, 0.8),
    Fault(80, 40, FaultKind.CAVITATION, 0.9),
    Fault(140, 120, FaultKind.BEARING_WEAR, 1.0),
    Fault(280, 15, FaultKind.SENSOR_SPIKE, 1.0, "Pressure"),
    Fault(305, 20, FaultKind.SENSOR_STUCK, 1.0, "Volume Flow RateRMS"),
    Fault(335, 45, FaultKind.SENSOR_DRIFT, 1.0, "Thermocouple"),
)


@dataclass(frozen=True, slots=True)
class PumpParams:
    """Every constant of the model, with its unit; defaults sit near the SKAB test bed."""

    # pump, at nominal speed (n = 1)
    shutoff_head_m: float = 40.0  # H0
    curve_coeff: float = 4.0e6  # a, m / (m^3/s)^2
    bep_flow_m3s: float = 2.1e-3  # Q_bep, about 126 l/min
    peak_efficiency: float = 0.78  # eta_max
    min_efficiency: float = 0.2  # floor far from the BEP, keeps P_s finite
    # loop
    static_head_m: float = 5.0  # H_st
    pipe_coeff: float = 1.0e6  # k_pipe, m / (m^3/s)^2
    valve_coeff: float = 2.9e6  # k_v at full opening
    min_valve_opening: float = 0.03  # a "closed" valve still passes a little
    # suction side (NPSH)
    suction_static_m: float = 1.0  # z_s, tank level above the pump inlet
    suction_loss_m: float = 1.0  # h_s at the BEP, grows with Q^2
    npshr_const_m: float = 1.0  # r0
    npshr_quad_m: float = 2.0  # r2
    cavitation_drop_m: float = 10.0  # suction head lost at cavitation severity 1
    cavitation_head_loss: float = 0.35  # head breakdown at full cavitation (fraction)
    cavitation_surge_hz: float = 0.7  # the flow's low-frequency surge while cavitating
    cavitation_surge: float = 0.08  # surge amplitude (fraction of flow)
    # motor and supply
    supply_voltage_v: float = 230.0  # 230 single phase (SKAB), or 400 three phase
    phases: int = 1
    power_factor: float = 0.85
    motor_efficiency: float = 0.85
    bearing_friction_w: float = 60.0  # P_friction of healthy bearings
    wear_friction_gain: float = 2.0  # P_friction x (1 + gain) at full wear
    # heat
    ambient_c: float = 25.0
    fluid_mass_kg: float = 60.0
    loop_ua_w_per_k: float = 400.0  # loop to room
    housing_g_w_per_k: float = 2.8  # motor housing to room
    housing_tau_s: float = 120.0
    # vibration RMS, g (scaled by n^2: forces grow with the square of speed)
    vib_base_g: float = 0.17
    vib_flow_g: float = 0.03  # at the BEP flow
    vib_off_bep_g: float = 0.15  # part-load recirculation, at zero flow
    vib_cavitation_g: float = 0.25  # at full cavitation
    vib_wear_g: float = 0.15  # at full wear
    acc2_gain: float = 1.35  # the bearing accelerometer reads higher
    # sensor faults
    spike_rate_per_s: float = 2.0
    spike_gain: float = 3.0  # a spike multiplies or divides the value by 1 + gain x severity
    drift_fraction: float = 0.2  # offset at the end of a drift, fraction of the value
    # Gaussian sensor noise, one standard deviation per signal in its unit
    noise: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(
            {
                "Accelerometer1RMS": 0.004,
                "Accelerometer2RMS": 0.005,
                "Current": 0.03,
                "Pressure": 0.02,
                "Temperature": 0.2,
                "Thermocouple": 0.05,
                "Voltage": 4.0,  # the supply itself wanders; the current follows it
                "Volume Flow RateRMS": 0.8,
            }
        )
    )

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError(f"phases must be 1 or 3, got {self.phases}")


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """Where pump and system curves meet: flow (m^3/s), head (m), efficiency (0..1)."""

    flow_m3s: float
    head_m: float
    efficiency: float


def operating_point(
    p: PumpParams, *, valve: float, speed: float, cavitation: float = 0.0
) -> OperatingPoint:
    """Solve pump curve = system curve for the flow; pure, no state."""
    v = max(p.min_valve_opening, min(1.0, valve))
    k_sys = p.pipe_coeff + p.valve_coeff / v**2  # H_s = H_st + k_sys Q^2
    # cavitation breaks the head down: H_p = (1 - kappa c)(H0 n^2 - a Q^2)
    keep = 1.0 - p.cavitation_head_loss * cavitation
    shutoff = keep * p.shutoff_head_m * speed**2
    lift = max(shutoff - p.static_head_m, 0.0)  # no flow below the static head
    q = math.sqrt(lift / (keep * p.curve_coeff + k_sys))
    head = shutoff - keep * p.curve_coeff * q**2
    q_bep = p.bep_flow_m3s * max(speed, 1e-6)  # affinity: the BEP moves with speed
    eta = p.peak_efficiency * (1.0 - ((q - q_bep) / q_bep) ** 2)
    return OperatingPoint(q, head, max(p.min_efficiency, eta))


def _vapour_pressure_pa(t_c: float) -> float:
    # Antoine equation for water, 1-100 degC: log10(p/mmHg) = 8.07131 - 1730.63 / (233.426 + T)
    t = min(max(t_c, 1.0), 100.0)
    return 133.322 * 10 ** (8.07131 - 1730.63 / (233.426 + t))


def _lag(value: float, target: float, dt: float, tau: float) -> float:
    # exact solution of a first-order lag over dt: stable for any step size
    return target + (value - target) * math.exp(-dt / tau)


@dataclass
class PumpPlant:
    """The loop's state; ``step(dt)`` advances it ``dt`` seconds and returns every signal.

    ``valve`` (0..1) and ``speed`` (fraction of nominal) are setpoints a caller may change
    between steps. The plant starts at the thermal equilibrium of its first operating
    point, so a fresh plant shows no warm-up transient. Same seed, same schedule, same
    ``dt`` sequence -> the same values, bit for bit.
    """

    seed: int = 0
    faults: Sequence[Fault] = DEFAULT_FAULTS
    params: PumpParams = field(default_factory=PumpParams)
    valve: float = 1.0
    speed: float = 1.0
    t: float = 0.0
    fluid_c: float = field(init=False)
    housing_c: float = field(init=False)
    # where the housing's temperature settles with the loop as it runs now: after a fault
    # that heated it ends, it cools back with a lag of ``housing_tau_s`` (minutes)
    housing_steady_c: float = field(init=False)
    # noise draws never depend on the faults, so a sensor fault changes only its sensor
    _noise: random.Random = field(init=False, repr=False)
    _events: random.Random = field(init=False, repr=False)
    _held: dict[Fault, float] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"speed must be > 0, got {self.speed}")
        self._noise = random.Random(self.seed)
        self._events = random.Random(self.seed + 0x5EED)
        op = operating_point(self.params, valve=self.valve, speed=self.speed)
        shaft, _, housing_w = self._powers(op, wear=0.0)
        self.fluid_c = self.params.ambient_c + shaft / self.params.loop_ua_w_per_k
        self.housing_c = self.params.ambient_c + housing_w / self.params.housing_g_w_per_k
        self.housing_steady_c = self.housing_c

    @property
    def housing_excess_c(self) -> float:
        """How far the motor housing is above the temperature it settles at (°C)."""
        return self.housing_c - self.housing_steady_c

    def level(self, kind: FaultKind) -> float:
        """The strongest active fault of ``kind`` now, 0..1."""
        return max((f.level(self.t) for f in self.faults if f.kind == kind), default=0.0)

    def step(self, dt: float) -> dict[str, float]:
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number of seconds, got {dt}")
        p = self.params
        self.t += dt
        noise = {name: self._noise.gauss(0.0, p.noise[name]) for name in SIGNALS}
        turbulence = self._noise.gauss(0.0, 1.0)

        # (1) plant faults at this instant
        closing = self.level(FaultKind.VALVE_CLOSING)
        wear = self.level(FaultKind.BEARING_WEAR)
        valve = self.valve * (1.0 - closing)

        # (2) hydraulics; NPSH from the non-cavitating flow (one pass, no iteration:
        # cavitation lowers Q, which would only soften it, and the model need not converge)
        op = operating_point(p, valve=valve, speed=self.speed)
        cavitation = self._cavitation(op.flow_m3s)
        if cavitation > 0:
            op = operating_point(p, valve=valve, speed=self.speed, cavitation=cavitation)
        surge = 1.0 + cavitation * (
            p.cavitation_surge * math.sin(2 * math.pi * p.cavitation_surge_hz * self.t)
            + 0.5 * p.cavitation_surge * turbulence
        )
        flow = op.flow_m3s * surge
        head = op.head_m * (2.0 - surge)  # a surge in flow is a dip in head, and back

        # (3) motor: the supply voltage wanders, the current carries the load
        shaft, motor_in, housing_w = self._powers(op, wear)
        volts = p.supply_voltage_v + noise["Voltage"]
        phase_factor = math.sqrt(3) if p.phases == 3 else 1.0
        amps = motor_in / (phase_factor * volts * p.power_factor)

        # (4) heat: loop water and motor housing, first-order lags
        fluid_tau = p.fluid_mass_kg * _CP_WATER / p.loop_ua_w_per_k
        self.fluid_c = _lag(self.fluid_c, p.ambient_c + shaft / p.loop_ua_w_per_k, dt, fluid_tau)
        self.housing_steady_c = p.ambient_c + housing_w / p.housing_g_w_per_k
        self.housing_c = _lag(self.housing_c, self.housing_steady_c, dt, p.housing_tau_s)

        # (5) vibration: flow forces, part-load recirculation, cavitation, worn bearing
        q_rel = flow / (p.bep_flow_m3s * self.speed)
        hydraulic = p.vib_flow_g * q_rel**2 + p.vib_off_bep_g * (1.0 - min(q_rel, 1.0)) ** 2
        vib = self.speed**2 * (p.vib_base_g + hydraulic)
        acc1 = vib + p.vib_cavitation_g * cavitation + p.vib_wear_g * wear
        acc2 = p.acc2_gain * vib + 0.5 * p.vib_cavitation_g * cavitation + 2 * p.vib_wear_g * wear

        # (6) what the sensors report
        truth = {
            "Accelerometer1RMS": acc1,
            "Accelerometer2RMS": acc2,
            "Current": amps,
            "Pressure": _RHO * _G * head / 1e5,
            "Temperature": self.housing_c,
            "Thermocouple": self.fluid_c,
            "Voltage": volts,
            "Volume Flow RateRMS": flow * _M3S_TO_LPM,
        }
        values = {name: v if name == "Voltage" else v + noise[name] for name, v in truth.items()}
        return self._sensor_faults(values, dt)

    def npsh_m(self, flow: float) -> tuple[float, float]:
        """(available, required) NPSH in metres at ``flow`` m^3/s, now."""
        p = self.params
        q_rel = flow / p.bep_flow_m3s
        npsh_a = (
            (_P_ATM - _vapour_pressure_pa(self.fluid_c)) / (_RHO * _G)
            + p.suction_static_m
            - p.suction_loss_m * q_rel**2
            - p.cavitation_drop_m * self.level(FaultKind.CAVITATION)
        )
        return npsh_a, p.npshr_const_m + p.npshr_quad_m * q_rel**2

    def _cavitation(self, flow: float) -> float:
        """0..1: how far the available NPSH falls short of the required."""
        npsh_a, npsh_r = self.npsh_m(flow)
        return min(1.0, max(0.0, (npsh_r - npsh_a) / npsh_r))

    def _powers(self, op: OperatingPoint, wear: float) -> tuple[float, float, float]:
        """Shaft power, motor input power, heat into the motor housing (W)."""
        p = self.params
        friction = p.bearing_friction_w * (1.0 + p.wear_friction_gain * wear)
        shaft = _RHO * _G * op.flow_m3s * op.head_m / op.efficiency + friction
        motor_in = shaft / p.motor_efficiency
        return shaft, motor_in, friction + (motor_in - shaft)

    def _sensor_faults(self, values: dict[str, float], dt: float) -> dict[str, float]:
        p = self.params
        for f in self.faults:
            if f.kind not in SENSOR_FAULTS:
                continue
            if not f.active(self.t):
                self._held.pop(f, None)
                continue
            # stuck and drift both start from the value the sensor had at onset
            onset = self._held.setdefault(f, values[f.signal])
            if f.kind is FaultKind.SENSOR_STUCK:
                values[f.signal] = onset
            elif f.kind is FaultKind.SENSOR_DRIFT:
                elapsed = (self.t - f.start_s) / f.duration_s
                values[f.signal] += f.severity * p.drift_fraction * abs(onset) * elapsed
            elif self._events.random() < 1.0 - math.exp(-p.spike_rate_per_s * dt):
                factor = 1.0 + p.spike_gain * f.severity
                up = self._events.random() < 0.5
                values[f.signal] *= factor if up else 1.0 / factor
        return values
