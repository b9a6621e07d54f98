"""The SIMULATED pump: deterministic for a seed, physically sane, and never NaN or infinite."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil_tests.plant import (
    DEFAULT_FAULTS,
    SIGNALS,
    Fault,
    FaultKind,
    PumpParams,
    PumpPlant,
    operating_point,
)


def run(plant: PumpPlant, seconds: float, dt: float = 0.5) -> list[dict[str, float]]:
    return [plant.step(dt) for _ in range(round(seconds / dt))]


def mean(rows: list[dict[str, float]], signal: str) -> float:
    return statistics.fmean(r[signal] for r in rows)


def test_same_seed_and_schedule_give_identical_values() -> None:
    assert run(PumpPlant(seed=3), 400) == run(PumpPlant(seed=3), 400)


def test_different_seeds_give_different_noise() -> None:
    assert run(PumpPlant(seed=1), 5) != run(PumpPlant(seed=2), 5)


def test_every_step_reports_every_signal_in_register_order() -> None:
    assert list(PumpPlant().step(0.1)) == list(SIGNALS)


def test_closing_the_valve_lowers_flow_and_raises_pressure() -> None:
    p = PumpParams()
    opened = operating_point(p, valve=1.0, speed=1.0)
    throttled = operating_point(p, valve=0.3, speed=1.0)
    assert throttled.flow_m3s < opened.flow_m3s
    assert throttled.head_m > opened.head_m
    healthy = run(PumpPlant(seed=5, faults=()), 30)
    closing = run(PumpPlant(seed=5, faults=(Fault(0, 60, FaultKind.VALVE_CLOSING, 0.8),)), 30)
    tail = slice(-20, None)  # after the ramp
    assert mean(closing[tail], "Volume Flow RateRMS") < 0.6 * mean(
        healthy[tail], "Volume Flow RateRMS"
    )
    assert mean(closing[tail], "Pressure") > mean(healthy[tail], "Pressure") + 0.5


@given(v1=st.floats(0.05, 1.0), v2=st.floats(0.05, 1.0), speed=st.floats(0.5, 1.2))
def test_flow_never_grows_as_the_valve_closes(v1: float, v2: float, speed: float) -> None:
    lo, hi = sorted((v1, v2))
    p = PumpParams()
    assert operating_point(p, valve=lo, speed=speed).flow_m3s <= (
        operating_point(p, valve=hi, speed=speed).flow_m3s + 1e-12
    )


def test_flow_and_head_follow_the_affinity_laws_at_shutoff() -> None:
    p = PumpParams()
    # with the valve nearly shut the head tends to H0 n^2
    for n in (0.8, 1.0):
        op = operating_point(p, valve=0.0, speed=n)
        assert op.head_m == pytest.approx(p.shutoff_head_m * n**2, rel=0.05)


def test_cavitation_raises_vibration_and_lowers_flow() -> None:
    healthy = run(PumpPlant(seed=9, faults=()), 30)
    cavitating = run(PumpPlant(seed=9, faults=(Fault(0, 60, FaultKind.CAVITATION, 0.9),)), 30)
    tail = slice(-20, None)
    for acc in ("Accelerometer1RMS", "Accelerometer2RMS"):
        assert mean(cavitating[tail], acc) > mean(healthy[tail], acc) + 0.05
    assert mean(cavitating[tail], "Volume Flow RateRMS") < mean(
        healthy[tail], "Volume Flow RateRMS"
    )


def test_cavitation_makes_the_flow_unsteady() -> None:
    healthy = run(PumpPlant(seed=9, faults=()), 30)
    cavitating = run(PumpPlant(seed=9, faults=(Fault(0, 60, FaultKind.CAVITATION, 1.0),)), 30)
    spread = [
        statistics.pstdev(r["Volume Flow RateRMS"] for r in rows[-40:])
        for rows in (healthy, cavitating)
    ]
    assert spread[1] > 2 * spread[0]


def test_bearing_wear_raises_bearing_temperature_over_time() -> None:
    rows = run(PumpPlant(seed=4, faults=(Fault(0, 300, FaultKind.BEARING_WEAR, 1.0),)), 300)
    early, late = rows[:20], rows[-20:]
    assert mean(late, "Temperature") > mean(early, "Temperature") + 10
    assert mean(late, "Accelerometer2RMS") > mean(early, "Accelerometer2RMS") + 0.1


def test_a_healthy_plant_starts_at_its_thermal_equilibrium() -> None:
    rows = run(PumpPlant(seed=2, faults=()), 900, dt=1.0)
    for signal in ("Temperature", "Thermocouple"):
        assert abs(mean(rows[-60:], signal) - mean(rows[:60], signal)) < 0.5


def test_a_stuck_sensor_freezes_only_its_own_signal() -> None:
    stuck = Fault(10, 20, FaultKind.SENSOR_STUCK, 1.0, "Pressure")
    faulty = run(PumpPlant(seed=6, faults=(stuck,)), 40)
    clean = run(PumpPlant(seed=6, faults=()), 40)
    during = [r["Pressure"] for r in faulty[21:59]]
    assert len(set(during)) == 1
    for a, b in zip(faulty, clean, strict=True):
        assert {k: v for k, v in a.items() if k != "Pressure"} == {
            k: v for k, v in b.items() if k != "Pressure"
        }
    assert faulty[-1]["Pressure"] == clean[-1]["Pressure"]  # it recovers when the fault ends


def test_a_spiking_sensor_shows_outliers_far_from_the_clean_value() -> None:
    spike = Fault(0, 60, FaultKind.SENSOR_SPIKE, 1.0, "Volume Flow RateRMS")
    faulty = run(PumpPlant(seed=8, faults=(spike,)), 60)
    clean = run(PumpPlant(seed=8, faults=()), 60)
    ratios = [
        a["Volume Flow RateRMS"] / b["Volume Flow RateRMS"]
        for a, b in zip(faulty, clean, strict=True)
    ]
    assert any(r > 3 for r in ratios) and any(r < 1 / 3 for r in ratios)


def test_a_drifting_sensor_moves_further_from_the_truth_over_time() -> None:
    drift = Fault(0, 100, FaultKind.SENSOR_DRIFT, 1.0, "Thermocouple")
    faulty = run(PumpPlant(seed=1, faults=(drift,)), 99)
    clean = run(PumpPlant(seed=1, faults=()), 99)
    offsets = [a["Thermocouple"] - b["Thermocouple"] for a, b in zip(faulty, clean, strict=True)]
    assert offsets[-1] > offsets[len(offsets) // 2] > offsets[5] >= 0


def test_the_default_schedule_shows_every_fault_within_six_minutes() -> None:
    assert {f.kind for f in DEFAULT_FAULTS} == set(FaultKind)
    assert max(f.start_s for f in DEFAULT_FAULTS) < 360


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"severity": 1.5}, "severity"),
        ({"duration_s": 0}, "duration_s"),
        ({"start_s": -1}, "start_s"),
        ({"signal": "Humidity"}, "signal"),
        ({"kind": "meltdown"}, "meltdown"),
    ],
)
def test_a_bad_fault_is_refused_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"start_s": 0, "duration_s": 1, "kind": "cavitation"} | kwargs
    with pytest.raises(ValueError, match=field):
        Fault(**args)  # type: ignore[arg-type]  # bad Fault arguments on purpose: the test checks their refusal


def test_a_non_positive_step_is_refused() -> None:
    with pytest.raises(ValueError, match="dt"):
        PumpPlant().step(0)


faults = st.builds(
    Fault,
    start_s=st.floats(0, 50),
    duration_s=st.floats(0.01, 50),
    kind=st.sampled_from(list(FaultKind)),
    severity=st.floats(0, 1),
    signal=st.sampled_from(list(SIGNALS)),
)


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.lists(faults, max_size=8),
    seed=st.integers(0, 2**32),
    valve=st.floats(0, 1),
    speed=st.floats(0.05, 1.5),
    steps=st.lists(st.floats(0.001, 30), min_size=1, max_size=40),
)
def test_random_schedules_never_produce_nan_or_infinity(
    schedule: list[Fault], seed: int, valve: float, speed: float, steps: list[float]
) -> None:
    plant = PumpPlant(seed=seed, faults=schedule, valve=valve, speed=speed)
    for dt in steps:
        values = plant.step(dt)
        assert all(math.isfinite(v) for v in values.values()), values
