"""The capsules' SIMULATED plants: seeded, inside their bands when healthy, and each fault shows."""

from __future__ import annotations

import numpy as np
import pytest

from capsules.catalogue import catalogue, find
from capsules.sims import simulate
from capsules.sims.magnets import MagnetGrade, operating_loss
from capsules.spec import FaultSpec


def _band_share(name: str, rows: int, dt: float) -> float:
    """Share of (signal, row) cells of a fault-free run inside their normal band."""
    cap = find(name)
    run = simulate(cap, rows, dt, faults=())
    lo = np.array([s.normal[0] for s in cap.signals])
    hi = np.array([s.normal[1] for s in cap.signals])
    return float(((run.x >= lo) & (run.x <= hi)).mean())


@pytest.mark.parametrize(
    ("name", "rows", "dt"),
    [
        ("permanent-magnets", 3000, 0.1),
        ("quality-ndt", 3000, 0.1),
        ("logistics-routing", 1440, 60.0),
        ("warehousing-inventory", 1440, 60.0),
        ("forming", 3000, 0.1),
    ],
)
def test_healthy_operation_stays_inside_the_normal_bands(name: str, rows: int, dt: float) -> None:
    assert _band_share(name, rows, dt) > 0.99


def test_every_capsule_has_a_simulator_that_runs_and_is_seeded() -> None:
    for cap in catalogue():
        if cap.connectors[0].protocol != "modbus":
            continue  # served over OPC UA / MQTT by a site, simulated as values only
        a = simulate(cap, 50, cap.simulator.period_s)
        b = simulate(cap, 50, cap.simulator.period_s)
        assert np.array_equal(a.x, b.x), cap.name
        assert np.isfinite(a.x).all(), cap.name


def test_the_oven_demagnetises_only_past_the_knee() -> None:
    g = MagnetGrade()
    assert operating_loss(g, 150.0) < 1e-3
    assert operating_loss(g, 180.0) < operating_loss(g, 190.0) < operating_loss(g, 195.0)
    assert operating_loss(g, 195.0) > 0.1


def _during(
    name: str, fault: FaultSpec, rows: int, dt: float, signal: str
) -> tuple[float, float, float]:
    """Mean of ``signal`` in the fault's second half, healthy and faulty, and its healthy sd."""
    cap = find(name)
    base = simulate(cap, rows, dt, faults=())
    hit = simulate(cap, rows, dt, faults=(fault,))
    col = base.signals.index(signal)
    window = (hit.t >= fault.start_s + 0.5 * fault.duration_s) & (
        hit.t < fault.start_s + fault.duration_s
    )
    healthy = base.x[window, col]
    return float(healthy.mean()), float(hit.x[window, col].mean()), float(healthy.std())


@pytest.mark.parametrize(
    ("name", "kind", "signal", "direction"),
    [
        ("permanent-magnets", "under_magnetised", "flux", -1),
        ("permanent-magnets", "under_magnetised", "capacitor_voltage", -1),
        ("permanent-magnets", "cracked_magnet", "surface_field", -1),
        ("permanent-magnets", "oven_drift", "flux", -1),
        ("permanent-magnets", "oven_drift", "oven_temperature", +1),
        ("quality-ndt", "flaw", "flaw_gate_amplitude", +1),
        ("quality-ndt", "flaw", "backwall_amplitude", -1),
        ("quality-ndt", "couplant_loss", "backwall_amplitude", -1),
        ("quality-ndt", "ae_burst", "ae_count_rate", +1),
        ("quality-ndt", "gauge_drift", "gauge_master", +1),
    ],
)
def test_each_physical_fault_moves_its_signals(
    name: str, kind: str, signal: str, direction: int
) -> None:
    fault = FaultSpec(kind, 30.0, 100.0, 1.0)
    healthy, faulty, sd = _during(name, fault, 1400, 0.1, signal)
    assert (faulty - healthy) * direction > sd  # a shift of more than one healthy sd


def test_couplant_loss_leaves_the_attenuation_reading_alone() -> None:
    # the ratio of two back-wall echoes cancels the coupling: a real UT property
    healthy, faulty, sd = _during(
        "quality-ndt", FaultSpec("couplant_loss", 30.0, 100.0, 1.0), 1400, 0.1, "attenuation"
    )
    assert abs(faulty - healthy) < sd


@pytest.mark.parametrize(
    ("name", "kind", "signal", "direction"),
    [
        ("warehousing-inventory", "supplier_delay", "stock_on_hand", -1),
        ("warehousing-inventory", "demand_surge", "open_orders", +1),
        ("logistics-routing", "dock_congestion", "trucks_waiting", +1),
        ("warehousing-inventory", "picker_absence", "open_orders", +1),
    ],
)
def test_each_logistics_disturbance_moves_its_flow(
    name: str, kind: str, signal: str, direction: int
) -> None:
    fault = FaultSpec(kind, 3600.0, 7200.0, 1.0)
    healthy, faulty, _ = _during(name, fault, 720, 60.0, signal)
    assert (faulty - healthy) * direction > 0
