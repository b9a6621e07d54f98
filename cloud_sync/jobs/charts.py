"""Server-rendered SVG charts of a job's result (no script): an RND1 study's trials and best
point, an M2N2 run's selection accuracy. Colours are SVG attributes, not style attributes,
so the page needs no CSP exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from cloud_sync.jobs.store import JobRow

__all__ = ["Chart", "charts_for"]

W, H, PAD = 560, 220, 40


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    svg: str  # markup made here from numbers only; text is escaped


def _scale(values: Sequence[float], lo_px: float, hi_px: float) -> tuple[float, float, Any]:
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo or 1.0
    return lo, hi, lambda v: lo_px + (v - lo) / span * (hi_px - lo_px)


def _frame(x_label: str, y_label: str, ylo: float, yhi: float, body: list[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" role="img">',
            f'<rect x="{PAD}" y="10" width="{W - PAD - 10}" height="{H - PAD - 10}" '
            'fill="none" stroke="#bbb"/>',
            f'<text x="{W // 2}" y="{H - 8}" font-size="11" text-anchor="middle">'
            f"{escape(x_label)}</text>",
            f'<text x="4" y="20" font-size="10">{yhi:.4g}</text>',
            f'<text x="4" y="{H - PAD}" font-size="10">{ylo:.4g}</text>',
            f'<text x="{PAD + 4}" y="24" font-size="11">{escape(y_label)}</text>',
            *body,
            "</svg>",
        ]
    )


def _history(title: str, y_label: str, values: list[float], best: list[float]) -> Chart:
    n = max(len(values) - 1, 1)
    ylo, yhi, y = _scale(values + best, H - PAD, 10)

    def x(i: int) -> float:
        return PAD + i / n * (W - PAD - 10)

    body = [
        f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="#90a4ae"/>'
        for i, v in enumerate(values)
        if math.isfinite(v)
    ]
    if best:
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(best))
        body.append(f'<polyline points="{pts}" fill="none" stroke="#1565c0" stroke-width="2"/>')
    return Chart(title, _frame("trial", y_label, ylo, yhi, body))


def _running(values: list[float], better: Any) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out or better(v, out[-1]) else out[-1])
    return out


def _tune(result: dict[str, Any]) -> list[Chart]:
    f1 = [float(t["value"]) for t in result["trials"]]
    return [
        _history("Selection F1 per trial (line: best so far)", "F1", f1, _running(f1, float.__gt__))
    ]


def _setpoint(result: dict[str, Any]) -> list[Chart]:
    trials = result["trials"]
    ok = [max(t["constraints"]) <= 0 for t in trials]
    power = [float(t["value"]) if good else math.nan for t, good in zip(trials, ok, strict=True)]
    feasible = [p for p in power if math.isfinite(p)]
    history = _history(
        "Power of feasible trials, W (line: best so far)",
        "W",
        power,
        _running(feasible, float.__lt__) if feasible else [],
    )
    _, _, x = _scale([t["params"]["valve"] for t in trials], PAD, W - 10)
    vlo, vhi, y = _scale([t["params"]["speed"] for t in trials], H - PAD, 10)
    body = [
        f'<circle cx="{x(t["params"]["valve"]):.1f}" cy="{y(t["params"]["speed"]):.1f}" r="3" '
        f'fill="{"#2e7d32" if good else "#e0e0e0"}"/>'
        for t, good in zip(trials, ok, strict=True)
    ]
    b = result["best"]
    body.append(
        f'<circle cx="{x(b["valve"]):.1f}" cy="{y(b["speed"]):.1f}" r="7" fill="none" '
        'stroke="#c62828" stroke-width="2"/>'
    )
    space = Chart(
        "Setpoints tried (green: feasible; ring: best)",
        _frame("valve opening", "speed", vlo, vhi, body),
    )
    return [history, space]


def _m2n2(result: dict[str, Any]) -> list[Chart]:
    h = [float(v) for v in result.get("history", [])]
    return [_history("Best selection accuracy in the archive", "accuracy", h, h)] if h else []


def charts_for(job: JobRow) -> list[Chart]:
    if job.result is None:
        return []
    make = {"rnd1.tune": _tune, "rnd1.setpoint": _setpoint, "m2n2": _m2n2}.get(job.type)
    try:
        return make(job.result) if make else []
    except (KeyError, TypeError, ValueError):
        return []  # a result of an older shape: the JSON below still shows it
