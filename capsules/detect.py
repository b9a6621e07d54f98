"""Detectors of a capsule and how well they find its SIMULATED faults.

Two detectors and their union: the capsule's model (built by ``models_onnx`` on simulated
normal operation, alarming as the agent does: EWMA-smoothed score over the manifest's
threshold) and the normal-band rule (any signal outside its band). ``evaluate`` runs the
simulator with its fault schedule for several seeds and counts, per fault episode, whether
and how soon each detector alarmed, and the false alarms per hour on fault-free runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from capsules.sims import Simulation, simulate
from capsules.spec import Capsule
from models_onnx.evaluate import alarms
from models_onnx.recipes import Recipe, build

__all__ = [
    "EVALUATION_SEEDS",
    "DetectorScore",
    "Evaluation",
    "band_alarms",
    "evaluate",
    "train_model",
]

_GRACE = 0.5  # an alarm within half a fault's duration after its end still finds it
_TRAIN_SEED_OFFSET = 1000  # training runs never share a seed with evaluation runs
# Reported evaluations use seeds from here on; recipe settings in the catalogue were chosen
# on seeds 100-102, so no reported figure comes from the runs that chose the settings.
EVALUATION_SEEDS = tuple(range(300, 305))


def _columns(cap: Capsule, run: Simulation) -> NDArray[np.float64]:
    cols = [run.signals.index(s) for s in cap.model.signals]
    return run.x[:, cols]


def train_model(cap: Capsule, out_dir: Path, dt: float) -> Path:
    """Build the capsule's recipe on simulated normal rows, ``dt`` plant seconds apart.

    Returns the int8 manifest (the file the agent's ``[model] manifest`` names).
    """
    m = cap.model
    run = simulate(cap, m.train_rows, dt, faults=(), seed=cap.simulator.seed + _TRAIN_SEED_OFFSET)
    recipe = Recipe(kind=m.family, lags=m.lags, span=m.span, limit=m.limit, explained=m.explained)
    build(recipe, _columns(cap, run), list(m.signals), out_dir, model_id=cap.name)
    return out_dir / f"{cap.name}.int8.manifest.json"


def band_alarms(cap: Capsule, run: Simulation) -> NDArray[np.bool_]:
    lo = np.array([s.normal[0] for s in cap.signals])
    hi = np.array([s.normal[1] for s in cap.signals])
    return np.asarray(((run.x < lo) | (run.x > hi)).any(axis=1), dtype=np.bool_)


@dataclass(frozen=True, slots=True)
class DetectorScore:
    detector: str
    episodes: int
    detected: int
    median_delay_s: float | None
    false_alarms_per_h: float  # alarm onsets per hour on fault-free runs
    false_alarms_by_seed: tuple[float, ...]
    alarm_share_healthy: float  # share of fault-free rows in alarm
    detection_rate_by_seed: tuple[float, ...]
    by_fault: dict[str, float]  # fault kind -> share of its episodes detected

    @property
    def detection_rate(self) -> float:
        return self.detected / self.episodes if self.episodes else 0.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    capsule: str
    dt_s: float
    seeds: tuple[int, ...]
    scores: tuple[DetectorScore, ...]

    def outcomes(self, detector: str = "either") -> dict[str, tuple[float, ...]]:
        """The twin outcomes a feasibility model draws from, one value per seed."""
        s = next(x for x in self.scores if x.detector == detector)
        return {
            "detection_rate": s.detection_rate_by_seed,
            "false_alarms_per_h": s.false_alarms_by_seed,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "capsule": self.capsule,
            "dt_s": self.dt_s,
            "seeds": list(self.seeds),
            "simulated": True,
            "detectors": {
                s.detector: {**asdict(s), "detection_rate": round(s.detection_rate, 4)}
                for s in self.scores
            },
        }


def _episodes(cap: Capsule, run: Simulation, alarm: NDArray[np.bool_]) -> list[tuple[str, float]]:
    """(fault kind, delay in s or NaN when missed) for each fault of the schedule."""
    out = []
    for f in cap.simulator.faults:
        end = f.start_s + f.duration_s * (1 + _GRACE)
        hit = np.flatnonzero(alarm & (run.t >= f.start_s) & (run.t < end))
        out.append((f.kind, float(run.t[hit[0]] - f.start_s) if len(hit) else float("nan")))
    return out


def evaluate(cap: Capsule, manifest: Path, dt: float, seeds: Sequence[int]) -> Evaluation:
    """Detection per fault episode and false alarms per hour, for both detectors."""
    horizon = max(f.start_s + f.duration_s * (1 + _GRACE) for f in cap.simulator.faults)
    rows = int(horizon / dt) + 1
    names = ("model", "bands", "either")
    found: dict[str, list[tuple[int, str, float]]] = {n: [] for n in names}
    false: dict[str, list[float]] = {n: [] for n in names}
    share: dict[str, list[float]] = {n: [] for n in names}
    for seed in seeds:
        faulty = simulate(cap, rows, dt, seed=seed)
        healthy = simulate(cap, rows, dt, faults=(), seed=seed)
        for run, label in ((faulty, "faulty"), (healthy, "healthy")):
            model, bands = alarms(manifest, _columns(cap, run)), band_alarms(cap, run)
            for name, a in zip(names, (model, bands, model | bands), strict=True):
                if label == "faulty":
                    found[name] += [(seed, k, d) for k, d in _episodes(cap, run, a)]
                    continue
                # false alarms: rising edges of the alarm on a run with no fault at all
                edges = int(np.count_nonzero(a[1:] & ~a[:-1]) + int(a[0]))
                false[name].append(edges / (rows * dt / 3600.0))
                share[name].append(float(a.mean()))
    scores = []
    for name, eps in found.items():
        delays = [d for _, _, d in eps if not np.isnan(d)]
        kinds = sorted({k for _, k, _ in eps})
        scores.append(
            DetectorScore(
                detector=name,
                episodes=len(eps),
                detected=len(delays),
                median_delay_s=float(np.median(delays)) if delays else None,
                false_alarms_per_h=round(float(np.mean(false[name])), 3),
                false_alarms_by_seed=tuple(round(x, 3) for x in false[name]),
                alarm_share_healthy=round(float(np.mean(share[name])), 4),
                detection_rate_by_seed=tuple(
                    float(np.mean([not np.isnan(d) for s, _, d in eps if s == seed]))
                    for seed in seeds
                ),
                by_fault={
                    k: float(np.mean([not np.isnan(d) for _, kk, d in eps if kk == k]))
                    for k in kinds
                },
            )
        )
    return Evaluation(cap.name, dt, tuple(seeds), tuple(scores))
