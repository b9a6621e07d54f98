"""OBMI feasibility: capex, opex and benefits as distributions, and a Monte Carlo over them.

Each assumption is a triangular distribution (low, mode, high) with its basis: a source, or
text that starts "assumption". A benefit tied to a twin outcome (``twin = "detection_rate"``)
is multiplied by that outcome, drawn from what the twin measured on its simulated runs (one
value per seed), so the spread of the twin's results carries into the result. Net present
value over the horizon and the payback time come out as P10/P50/P90. Pure: values in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from capsules.spec import Assumption, Feasibility

__all__ = ["FeasibilityResult", "monte_carlo"]


@dataclass(frozen=True, slots=True)
class FeasibilityResult:
    currency: str
    runs: int
    seed: int
    npv: tuple[float, float, float]  # P10, P50, P90
    payback_years: tuple[float, float, float]  # P10, P50, P90 (inf: never within reach)
    annual_net: tuple[float, float, float]
    assumptions: tuple[dict[str, Any], ...]
    twin_outcomes: Mapping[str, tuple[float, ...]]

    def as_json(self) -> dict[str, Any]:
        def pct(v: tuple[float, float, float]) -> dict[str, float | None]:
            return {
                k: (round(x, 2) if np.isfinite(x) else None)
                for k, x in zip(("p10", "p50", "p90"), v, strict=True)
            }

        return {
            "currency": self.currency,
            "runs": self.runs,
            "seed": self.seed,
            "npv": pct(self.npv),
            "payback_years": pct(self.payback_years),
            "annual_net": pct(self.annual_net),
            "assumptions": list(self.assumptions),
            "twin_outcomes": {k: list(v) for k, v in self.twin_outcomes.items()},
        }


def _draw(a: Assumption, rng: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
    if a.low == a.high:
        return np.full(n, a.mode)
    return rng.triangular(a.low, a.mode, a.high, n)


def _total(
    items: Sequence[Assumption],
    rng: np.random.Generator,
    n: int,
    outcomes: Mapping[str, Sequence[float]],
) -> np.ndarray[Any, Any]:
    out = np.zeros(n)
    for a in items:
        v = _draw(a, rng, n)
        if a.twin:
            v = v * rng.choice(np.asarray(outcomes[a.twin], dtype=float), n)
        out += v
    return out


def _describe(part: str, a: Assumption) -> dict[str, Any]:
    return {
        "part": part,
        "name": a.name,
        "low": a.low,
        "mode": a.mode,
        "high": a.high,
        "per": a.per,
        "twin": a.twin or None,
        "basis": a.basis,
        "kind": "assumption" if a.basis.lower().startswith("assumption") else "source",
    }


def monte_carlo(
    f: Feasibility, outcomes: Mapping[str, Sequence[float]], *, runs: int = 5000, seed: int = 0
) -> FeasibilityResult:
    """NPV and payback over ``runs`` draws; ``outcomes`` maps a twin outcome to its values."""
    missing = {a.twin for a in f.benefits if a.twin} - set(outcomes)
    if missing:
        raise ValueError(f"no twin outcome measured for {sorted(missing)}")
    rng = np.random.default_rng(seed)
    capex = _total(f.capex, rng, runs, outcomes)
    opex = _total(f.opex_per_year, rng, runs, outcomes)
    benefit = _total(f.benefits, rng, runs, outcomes)
    net = benefit - opex
    years = np.arange(1, f.horizon_years + 1)
    npv = -capex + net * float((1.0 / (1.0 + f.discount_rate) ** years).sum())
    with np.errstate(divide="ignore"):
        payback = np.where(net > 0, capex / np.where(net > 0, net, 1.0), np.inf)

    def p(x: np.ndarray[Any, Any]) -> tuple[float, float, float]:
        # "nearest" draws no line between two runs, so a payback never reached (inf) stays inf
        a, b, c = np.percentile(x, [10, 50, 90], method="nearest")
        return float(a), float(b), float(c)

    listed = tuple(
        _describe(part, a)
        for part, items in (
            ("capex", f.capex),
            ("opex_per_year", f.opex_per_year),
            ("benefits", f.benefits),
        )
        for a in items
    )
    return FeasibilityResult(
        currency=f.currency,
        runs=runs,
        seed=seed,
        npv=p(npv),
        payback_years=p(payback),
        annual_net=p(net),
        assumptions=(
            *listed,
            {
                "part": "model",
                "name": "discounting",
                "basis": f"assumption: {f.horizon_years} years at {f.discount_rate:.0%} a year",
                "kind": "assumption",
            },
        ),
        twin_outcomes={k: tuple(float(x) for x in v) for k, v in outcomes.items()},
    )
