"""The facts a narrative sentence may rest on, and the fields each one offers to its template.

A fact is computed from evidence (the hub's site report, the log checkpoint, the
feasibility run); a sentence template may only name these fields, so no figure can
appear in a narrative that was not computed (``narrative.py`` renders them).
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["FACTS"]

# fact -> the fields its template may use
FACTS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "coverage": ("readings", "windows", "devices", "coverage_pct", "start", "end"),
        "gaps": ("gap_records", "readings_lost"),
        "anomalies": ("anomalous_windows", "first_at", "max_score", "threshold", "window"),
        "drift": ("drift_tests", "drifted_windows"),
        "model": ("model_id", "model_sha256"),
        "checkpoint": ("size", "root"),
        "signal": ("signal", "unit", "mean", "min", "max", "n", "window"),
        "feasibility": (
            "currency",
            "npv_p10",
            "npv_p50",
            "npv_p90",
            "payback_p50_years",
            "runs",
        ),
    }
)
