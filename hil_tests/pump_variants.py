"""Labelled runs of SIMULATED pump variants (different pumps, supplies and pipework), written
as SKAB-format CSV so fleet jobs read them like the SKAB sites.

Each run has ``normal_s`` seconds of normal operation (the calibration rows of the SKAB
protocol) and then one plant fault; the ``anomaly`` column is 1 while the fault is active.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

from hil_tests.plant import SIGNALS, Fault, FaultKind, PumpParams, PumpPlant, operating_point

__all__ = ["SWEEP_COLUMNS", "VARIANTS", "write_setpoint_sweep", "write_variant"]

# three sites that differ the way real plants do
VARIANTS: dict[str, PumpParams] = {
    "pump-a": PumpParams(),
    "pump-b": PumpParams(supply_voltage_v=400.0, phases=3, pipe_coeff=1.6e6),
    "pump-c": PumpParams(shutoff_head_m=34.0, bep_flow_m3s=1.8e-3, bearing_friction_w=90.0),
}
_KINDS = (FaultKind.VALVE_CLOSING, FaultKind.CAVITATION, FaultKind.BEARING_WEAR)


def _run(
    params: PumpParams, seed: int, normal_s: int, fault_s: int, tail_s: int
) -> list[list[float]]:
    rng = random.Random(seed)
    fault = Fault(
        normal_s + rng.uniform(50, 150), fault_s, rng.choice(_KINDS), rng.uniform(0.6, 1.0)
    )
    plant = PumpPlant(seed=seed, faults=(fault,), params=params)
    rows = []
    for _ in range(normal_s + 150 + fault_s + tail_s):
        values = plant.step(1.0)  # SKAB samples once a second
        rows.append([values[s] for s in SIGNALS] + [1.0 if fault.active(plant.t) else 0.0])
    return rows


def write_variant(
    folder: Path, name: str, *, runs: int = 4, normal_s: int = 450, fault_s: int = 250,
    tail_s: int = 100, seed: int = 0,
) -> list[Path]:  # fmt: skip
    """Write ``runs`` labelled runs of variant ``name`` as ``folder/<i>.csv``."""
    params = VARIANTS[name]
    folder.mkdir(parents=True, exist_ok=True)
    t0 = dt.datetime(2026, 1, 1)
    paths = []
    for i in range(runs):
        path = folder / f"{i}.csv"
        rows = _run(params, seed * 1000 + i, normal_s, fault_s, tail_s)
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter=";")
            w.writerow(["datetime", *SIGNALS, "anomaly"])
            for k, row in enumerate(rows):
                stamp = (t0 + dt.timedelta(seconds=k)).isoformat(sep=" ")
                w.writerow([stamp, *(f"{v:.6g}" for v in row)])
        paths.append(path)
    return paths


SWEEP_COLUMNS = ("valve", "speed", "power_w", "flow_lpm", "npsh_margin_m")


def write_setpoint_sweep(path: Path, name: str, *, points: int = 300, seed: int = 0) -> int:
    """Logged operating points of variant ``name`` at random setpoints (valve opening,
    speed): measured electrical power (V x I x pf), flow, and the NPSH margin the plant
    had. What a shadow twin of the site's setpoints is trained on."""
    params = VARIANTS[name]
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    phase = 3**0.5 if params.phases == 3 else 1.0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(SWEEP_COLUMNS)
        for i in range(points):
            valve, speed = rng.uniform(0.2, 1.0), rng.uniform(0.5, 1.15)
            plant = PumpPlant(seed=seed + i, faults=(), params=params, valve=valve, speed=speed)
            v = plant.step(1.0)
            power = v["Voltage"] * v["Current"] * params.power_factor * phase
            op = operating_point(params, valve=valve, speed=speed)
            available, required = plant.npsh_m(op.flow_m3s)
            row = (valve, speed, power, v["Volume Flow RateRMS"], available - required)
            w.writerow([f"{x:.6g}" for x in row])
    return points
