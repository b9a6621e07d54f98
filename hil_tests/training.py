"""Normal-operation data from the SIMULATED plant, for training models (no faults scheduled).

Written as SKAB-format CSV so `factoryops model build --csv` reads it like any real extract.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hil_tests.modbus_server import PLANT_REGISTER_MAP, decode_registers, encode_value
from hil_tests.plant import SIGNALS, PumpPlant

__all__ = ["as_served", "simulated_normal", "write_skab_csv"]

# the map's specs in SIGNALS order, the column order of the models
_ORDERED = [next(s for s in PLANT_REGISTER_MAP if s.signal == name) for name in SIGNALS]


def simulated_normal(
    seconds: float, *, seed: int = 7, dt_s: float = 0.1
) -> tuple[list[str], NDArray[np.float64]]:
    """``seconds`` of the pump with no faults, sampled every ``dt_s`` (the demo's poll rate)."""
    plant = PumpPlant(seed=seed, faults=())
    rows = [as_served(plant.step(dt_s)) for _ in range(int(seconds / dt_s))]
    return list(SIGNALS), np.array(rows, dtype=np.float64)


def as_served(values: dict[str, float]) -> list[float]:
    """The values as an agent reads them over Modbus: through the register map and back.

    A model trained on full-precision values would see the register rounding as anomalies.
    """
    return [decode_registers(s, encode_value(s, values[s.signal])) for s in _ORDERED]


def write_skab_csv(path: Path, seconds: float, *, seed: int = 7, dt_s: float = 0.1) -> int:
    """Write simulated normal operation as a SKAB-format CSV; returns the row count."""
    signals, x = simulated_normal(seconds, seed=seed, dt_s=dt_s)
    t0 = dt.datetime(2026, 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["datetime", *signals])
        for i, row in enumerate(x):
            stamp = (t0 + dt.timedelta(seconds=i * dt_s)).isoformat(sep=" ")
            w.writerow([stamp, *(f"{v:.6g}" for v in row)])
    return len(x)
