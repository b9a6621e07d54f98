"""What every capsule simulator shares: the fault clock, the register map, and offline runs.

``make_source`` builds the capsule's simulator as a ``hil_tests.feed.ValueSource`` (stepped by
an explicit dt); ``simulate`` runs one offline with a truth label per row, for training
models and evaluating detectors; ``register_map`` lays the capsule's Modbus signals out for
``hil_tests.modbus_server.ModbusFace``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from capsules.errors import CapsuleError
from capsules.spec import Capsule, FaultSpec
from hil_tests.modbus_server import RegisterSpec, decode_registers, encode_value

__all__ = ["FaultClock", "Simulation", "make_source", "register_map", "served", "simulate"]

# a fault sets in over the first fifth of its duration (a drift over all of it), as the
# pump's faults do (hil_tests/plant.py)
_RAMP_FRACTION = {"drift": 1.0, "oven_drift": 0.6, "gauge_drift": 1.0}
_DEFAULT_RAMP = 0.2


class CapsuleSource(Protocol):
    """A simulator: ``next(dt)`` advances dt plant seconds and returns every signal."""

    t: float

    def next(self, dt: float) -> dict[str, float]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FaultClock:
    """The faults of a schedule, asked by kind (and signal) at a plant time."""

    faults: tuple[FaultSpec, ...]

    def level(self, kind: str, t: float, signal: str = "") -> float:
        """The strongest active fault of ``kind`` (on ``signal``, if given) at ``t``, 0..1."""
        best = 0.0
        for f in self.faults:
            if f.kind != kind or (signal and f.signal != signal):
                continue
            if not f.start_s <= t < f.start_s + f.duration_s:
                continue
            ramp = f.duration_s * _RAMP_FRACTION.get(f.kind, _DEFAULT_RAMP)
            best = max(best, f.severity * min(1.0, (t - f.start_s) / ramp))
        return best

    def active(self, t: float) -> tuple[str, ...]:
        """The kinds active at ``t`` (the truth label of a row)."""
        return tuple(
            sorted({f.kind for f in self.faults if f.start_s <= t < f.start_s + f.duration_s})
        )


def register_map(cap: Capsule) -> tuple[RegisterSpec, ...]:
    """The capsule's Modbus signals as the simulator's registers (one Modbus connector)."""
    modbus = [c for c in cap.connectors if c.protocol == "modbus"]
    if len(modbus) != 1:
        raise CapsuleError(
            f"{cap.name}: the simulator serves exactly one Modbus connector, found {len(modbus)}",
            hint="simulate capsules whose connector speaks Modbus (see docs/capsules.md)",
        )
    return tuple(
        RegisterSpec(
            s.name,
            s.table,
            s.address or 0,
            s.type,
            "big",
            s.scale,
            s.offset,
            s.unit,
        )
        for s in modbus[0].signals
    )


def make_source(
    cap: Capsule, *, faults: Sequence[FaultSpec] | None = None, seed: int | None = None
) -> CapsuleSource:
    """The capsule's simulator with its own fault schedule (or ``faults``) and seed."""
    sim = cap.simulator
    clock = FaultClock(tuple(sim.faults if faults is None else faults))
    s = sim.seed if seed is None else seed
    # each model imported when used (the logistics one needs simpy)
    if sim.kind == "magnets":
        from capsules.sims.magnets import MagnetLine  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        return MagnetLine(clock, s)
    if sim.kind == "ndt":
        from capsules.sims.ndt import NdtStation  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        return NdtStation(clock, s)
    if sim.kind == "logistics":
        from capsules.sims.logistics import LogisticsSim  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        return LogisticsSim(clock, s)
    from capsules.sims.profile import ProfileSim  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    return ProfileSim(cap.signals, clock, s)


@dataclass(frozen=True, slots=True)
class Simulation:
    """An offline run: signals (columns), values (rows), plant times and truth labels."""

    signals: tuple[str, ...]
    x: NDArray[np.float64]
    t: NDArray[np.float64]
    labels: tuple[tuple[str, ...], ...]

    @property
    def faulty(self) -> NDArray[np.bool_]:
        return np.array([bool(label) for label in self.labels])


def served(cap: Capsule, values: dict[str, float]) -> list[float]:
    """The values as the agent reads them: through the register encoding and back (OPC UA
    and MQTT capsules deliver doubles, unchanged)."""
    if all(c.protocol != "modbus" for c in cap.connectors):
        return [values[s.name] for s in cap.signals]
    specs = {s.signal: s for s in register_map(cap)}
    return [
        decode_registers(specs[s.name], encode_value(specs[s.name], values[s.name]))
        for s in cap.signals
    ]


def simulate(
    cap: Capsule,
    rows: int,
    dt: float,
    *,
    faults: Sequence[FaultSpec] | None = None,
    seed: int | None = None,
) -> Simulation:
    """``rows`` samples every ``dt`` plant seconds, as served over Modbus, with labels."""
    source = make_source(cap, faults=faults, seed=seed)
    clock = FaultClock(tuple(cap.simulator.faults if faults is None else faults))
    x = np.empty((rows, len(cap.signals)), dtype=np.float64)
    t = np.empty(rows, dtype=np.float64)
    labels = []
    for i in range(rows):
        values = source.next(dt)
        x[i] = served(cap, values)
        t[i] = source.t
        labels.append(clock.active(source.t))
    return Simulation(tuple(s.name for s in cap.signals), x, t, tuple(labels))
