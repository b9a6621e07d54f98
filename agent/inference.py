"""ONNX scoring of windows (the ``Scorer`` port): rows by timestamp, smoothed, summarised.

Rules for bad input: a reading whose signal the model does not know is ignored by the model;
a missing signal takes its last known value (forward fill); a row still holding NaN or an
infinite value (or one beyond float32) is not scored (its readings get a NaN score); a raw
score is capped at ``SCORE_CAP`` before smoothing, and a NaN one (an overflow inside the
graph) is left out of the smoothing. A model whose manifest has
``lags`` > 0 (twin, autoencoder) gets each row stacked with the previous scored rows; before
enough history exists the oldest row is repeated. A model is swapped atomically.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from agent.scoring import WindowScores
from attestation.microproof import AnomalySummary, DriftTest, ModelRef
from attestation.reading import Reading
from models_onnx.manifest import LoadedModel, load_model

__all__ = ["OnnxScorer"]

DRIFT_P_VALUE = 0.01  # two-sample KS against the training score sample
F32_MAX = float(np.finfo(np.float32).max)
SCORE_CAP = 1e6  # raw scores are limit-normalised (1 = alarm): 1e6 is "off the scale"


@dataclass
class OnnxScorer:
    model: LoadedModel
    _smoothed: float | None = None
    _last: dict[str, float] = field(default_factory=dict)
    _history: NDArray[np.float64] | None = None  # the last ``lags`` scored rows, oldest first
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, manifest: Path) -> OnnxScorer:
        return cls(load_model(manifest))

    def swap(self, manifest: Path) -> None:
        """Load and verify a new model, then switch; on any error the old one keeps running."""
        new = load_model(manifest)  # raises ModelError before anything changes
        with self._lock:
            self.model, self._smoothed, self._history = new, None, None

    def score_window(self, readings: Sequence[Reading]) -> WindowScores:
        with self._lock:
            return self._score(readings)

    def _score(self, readings: Sequence[Reading]) -> WindowScores:
        m = self.model.manifest
        col = {s: i for i, s in enumerate(m.signals)}
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(readings):
            groups.setdefault(r.ts_ns, []).append(i)
        rows: list[list[float]] = []
        members: list[list[int]] = []
        for idxs in groups.values():
            for i in idxs:
                r = readings[i]
                if r.signal in col:
                    self._last[r.signal] = r.value
            row = [self._last.get(s, math.nan) for s in m.signals]
            rows.append(row)
            members.append(idxs)
        x = np.array(rows, dtype=np.float64).reshape(len(rows), len(m.signals))
        # the graph runs in float32: a value beyond its range cannot be scored either
        ok = (np.isfinite(x) & (np.abs(x) <= F32_MAX)).all(axis=1)
        raw = np.full(len(rows), np.nan, dtype=np.float64)
        if ok.any():
            good = x[ok]
            # an absurd but finite value overflows to inf inside the graph; capped, it still
            # alarms but cannot poison the EWMA for ever (inf - inf would give NaN)
            raw[ok] = np.minimum(self.model.score_rows(good, self._history), SCORE_CAP)
            if m.lags:
                past = good if self._history is None else np.concatenate([self._history, good])
                self._history = past[-m.lags :]
        alpha = 2.0 / (m.smoothing_span + 1) if m.smoothing_span > 1 else 1.0
        smoothed = np.full(len(rows), np.nan, dtype=np.float64)
        for j, v in enumerate(raw):
            if math.isnan(v):
                continue
            prev = v if self._smoothed is None else self._smoothed
            self._smoothed = alpha * v + (1 - alpha) * prev
            smoothed[j] = self._smoothed
        scores = [math.nan] * len(readings)
        for j, idxs in enumerate(members):
            for i in idxs:
                scores[i] = float(smoothed[j])
        valid = smoothed[~np.isnan(smoothed)]
        drift = None
        if len(valid) >= 8 and m.training_scores:
            ks = stats.ks_2samp(raw[~np.isnan(raw)], np.asarray(m.training_scores))
            drift = DriftTest(
                "ks_2samp_scores",
                float(ks.statistic),
                float(ks.pvalue),
                bool(ks.pvalue < DRIFT_P_VALUE),
            )
        return WindowScores(
            scores=tuple(scores),
            model=ModelRef(m.id, bytes.fromhex(m.sha256), m.version),
            anomaly=AnomalySummary(
                int((valid > m.threshold).sum()),
                float(valid.max()) if len(valid) else 0.0,
                m.threshold,
            ),
            drift=drift,
        )
