"""The scoring port: how a window's readings get anomaly scores before they are signed.

``agent/inference.py`` implements it with onnxruntime; the runtime works without one
(the micro-proof then records ``model: null``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from attestation.microproof import AnomalySummary, DriftTest, ModelRef
from attestation.reading import Reading

__all__ = ["Reloadable", "Scorer", "WindowScores"]


@dataclass(frozen=True, slots=True)
class WindowScores:
    """Scores for one window: one per reading (NaN where a reading could not be scored)."""

    scores: tuple[float, ...]
    model: ModelRef
    anomaly: AnomalySummary
    drift: DriftTest | None = None


@runtime_checkable
class Scorer(Protocol):
    """Scores a window in one batch; called off the event loop (it may take milliseconds)."""

    def score_window(self, readings: Sequence[Reading]) -> WindowScores: ...


@runtime_checkable
class Reloadable(Protocol):
    """A scorer whose model can be replaced while it runs (``agent/inference.py``)."""

    def swap(self, manifest: Path) -> None:
        """Load and check the new model, then switch; on error the old one keeps running."""
        ...
