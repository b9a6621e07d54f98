"""ONNX scoring of windows (the ``Scorer`` port): rows by timestamp, smoothed, summarised.

Rules for bad input: a reading whose signal the model does not know is ignored by the model;
a missing signal takes its last known value (forward fill); a row still holding NaN or an
infinite value (or one beyond float32) is not scored (its readings get a NaN score); a raw
score is capped at ``SCORE_CAP`` before smoothing, and a NaN one (an overflow inside the
graph) is left out of the smoothing. A model whose manifest has
``lags`` > 0 (twin, autoencoder) gets each row stacked with the previous scored rows; before
enough history exists the oldest row is repeated. A model is swapped atomically. A text
reading (an OPC UA String) that the model's signal list names is missing to the model, except
text numpy reads as a number (``"20"``): the window's values are converted in one C loop.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agent.config import ScoringConfig
from agent.scoring import WindowScores
from attestation.microproof import AnomalySummary, DriftTest, ModelRef
from attestation.reading import Reading
from models_onnx.manifest import LoadedModel, load_model
from models_onnx.scoring import ewma

__all__ = ["OnnxScorer", "kolmogorov_sf"]

DRIFT_P_VALUE = 0.01  # two-sample KS against the training score sample
F32_MAX = float(np.finfo(np.float32).max)
_TS, _SIGNAL, _VALUE = attrgetter("ts_ns"), attrgetter("signal"), attrgetter("value")


def _number(r: Reading) -> float:
    """A reading's value as the model reads it: text is missing (NaN), never a number."""
    v = r.value
    return v if isinstance(v, float) else math.nan


SCORE_CAP = 1e6  # raw scores are limit-normalised (1 = alarm): 1e6 is "off the scale"


@dataclass
class OnnxScorer:
    model: LoadedModel
    scoring: ScoringConfig = field(default_factory=ScoringConfig)  # a signed fragment's
    _smoothed: float | None = None
    _last: dict[str, float] = field(default_factory=dict)
    _history: NDArray[np.float64] | None = None  # the last ``lags`` scored rows, oldest first
    _sample: tuple[tuple[float, ...], NDArray[np.float64]] | None = None  # sorted, for KS
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, manifest: Path, scoring: ScoringConfig | None = None) -> OnnxScorer:
        return cls(load_model(manifest), scoring or ScoringConfig())

    def retune(self, scoring: ScoringConfig) -> None:
        """Score the next window with other settings (a configuration fragment's)."""
        with self._lock:
            self.scoring = scoring

    @property
    def threshold(self) -> float:
        """The alarm limit in use: the manifest's, times the configured factor."""
        return self.model.manifest.threshold * self.scoring.threshold_factor

    def swap(self, manifest: Path) -> None:
        """Load and verify a new model, then switch; on any error the old one keeps running."""
        new = load_model(manifest)  # raises ModelError before anything changes
        with self._lock:
            self.model, self._smoothed, self._history = new, None, None

    def score_window(self, readings: Sequence[Reading]) -> WindowScores:
        with self._lock:
            return self._score(readings)

    def _score(self, readings: Sequence[Reading]) -> WindowScores:
        # one pass over the readings in Python, the rest in numpy: this runs for every
        # reading the gateway signs (bench: agent_scoring_us_per_reading)
        m = self.model.manifest
        d = len(m.signals)
        col = {s: i for i, s in enumerate(m.signals)}
        n = len(readings)
        # map + attrgetter: C-level loops, about twice as fast as generator expressions
        ts = np.fromiter(map(_TS, readings), np.int64, n)
        sig = np.fromiter(map(col.get, map(_SIGNAL, readings), repeat(-1)), np.int64, n)
        try:
            val = np.fromiter(map(_VALUE, readings), np.float64, n)
        except ValueError:  # a text value (an OPC UA String): the model reads it as missing
            val = np.fromiter(map(_number, readings), np.float64, n)
        group = _groups(ts)  # row of each reading: readings of one timestamp form a row
        rows = int(group.max()) + 1 if n else 0
        x = self._rows(group, sig, val, rows, d)
        # the graph runs in float32: a value beyond its range cannot be scored either
        ok = (np.isfinite(x) & (np.abs(x) <= F32_MAX)).all(axis=1)
        raw = np.full(rows, np.nan, dtype=np.float64)
        if ok.any():
            good = x[ok]
            # an absurd but finite value overflows to inf inside the graph; capped, it still
            # alarms but cannot poison the EWMA for ever (inf - inf would give NaN)
            raw[ok] = np.minimum(self.model.score_rows(good, self._history), SCORE_CAP)
            if m.lags:
                past = good if self._history is None else np.concatenate([self._history, good])
                self._history = past[-m.lags :]
        smoothed = np.full(rows, np.nan, dtype=np.float64)
        scored = ~np.isnan(raw)
        if scored.any():
            span = self.scoring.smoothing_span or m.smoothing_span
            smoothed[scored] = ewma(raw[scored], span, self._smoothed)
            self._smoothed = float(smoothed[scored][-1])
        valid = smoothed[scored]
        drift = None
        if len(valid) >= 8 and m.training_scores:
            drift = _ks_drift(raw[scored], self._training_sorted(m.training_scores))
        return WindowScores(
            scores=tuple(smoothed[group].tolist()),
            model=ModelRef(m.id, bytes.fromhex(m.sha256), m.version, m.fleet_version, m.job_id),
            anomaly=AnomalySummary(
                int((valid > self.threshold).sum()),
                float(valid.max()) if len(valid) else 0.0,
                self.threshold,
            ),
            drift=drift,
        )

    def _rows(
        self,
        group: NDArray[np.int64],
        sig: NDArray[np.int64],
        val: NDArray[np.float64],
        rows: int,
        d: int,
    ) -> NDArray[np.float64]:
        """One row per timestamp in the manifest's signal order; a signal missing from a row
        takes its last known value (from earlier rows or windows), NaN before any."""
        signals = self.model.manifest.signals
        known = sig >= 0
        key = group[known] * d + sig[known]
        # the last reading of a signal within one timestamp wins
        last = len(key) - 1 - np.unique(key[::-1], return_index=True)[1]
        x = np.full((rows + 1, d), np.nan)
        present = np.zeros((rows + 1, d), dtype=np.bool_)
        x[0] = [self._last.get(s, math.nan) for s in signals]
        present[0] = True  # the carried-over values (NaN where a signal was never seen)
        x[1:].flat[key[last]] = val[known][last]
        present[1:].flat[key[last]] = True
        idx = np.where(present, np.arange(rows + 1)[:, None], 0)
        np.maximum.accumulate(idx, axis=0, out=idx)
        filled = x[idx, np.arange(d)]
        for j in np.flatnonzero(present[1:].any(axis=0)):
            self._last[signals[j]] = float(filled[-1, j])
        out: NDArray[np.float64] = filled[1:]
        return out

    def _training_sorted(self, sample: tuple[float, ...]) -> NDArray[np.float64]:
        if self._sample is None or self._sample[0] is not sample:
            self._sample = (sample, np.sort(np.asarray(sample, dtype=np.float64)))
        return self._sample[1]


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for Kolmogorov's limit distribution (``scipy.special.kolmogorov``) in plain
    floats: the alternating series ``2 sum (-1)^(k-1) exp(-2 k^2 x^2)`` where it converges
    fast, Jacobi's theta form ``1 - sqrt(2 pi)/x sum exp(-(2k-1)^2 pi^2 / (8 x^2))`` below 1.
    Both reach double precision within 20 terms. scipy.special would cost the gateway
    ~18 MiB of memory for this one value (ADR 0033)."""
    if not x > 0.0:  # NaN or <= 0: nothing differs
        return 1.0
    if x < 1.0:
        q = -(math.pi**2) / (8.0 * x * x)
        cdf = (
            math.sqrt(2.0 * math.pi)
            / x
            * math.fsum(math.exp((2 * k - 1) ** 2 * q) for k in range(1, 21))
        )
        return min(1.0, max(0.0, 1.0 - cdf))
    terms = (math.exp(-2.0 * k * k * x * x) for k in range(1, 21))
    sf = 2.0 * math.fsum(t if k % 2 else -t for k, t in enumerate(terms, start=1))
    return min(1.0, max(0.0, sf))


def _groups(ts: NDArray[np.int64]) -> NDArray[np.int64]:
    """Row index per reading: one row per distinct timestamp, in order of first appearance."""
    if len(ts) and (np.diff(ts) >= 0).all():  # the usual case: readings in time order
        return np.concatenate([[0], np.cumsum(np.diff(ts) != 0)]).astype(np.int64)
    _, first, inverse = np.unique(ts, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    out: NDArray[np.int64] = rank[inverse.ravel()]
    return out


def _ks_drift(raw: NDArray[np.float64], train: NDArray[np.float64]) -> DriftTest:
    """Two-sample Kolmogorov-Smirnov of the window's raw scores against the (sorted) training
    sample: the statistic D exactly, the p-value from Kolmogorov's limit distribution at
    sqrt(n*m/(n+m)) * D (Smirnov's classic asymptotic form; one ufunc call, where
    ``scipy.stats.ks_2samp`` costs ~2 ms a window on the gateway, more than the model)."""
    a = np.sort(raw)
    both = np.concatenate([a, train])
    cdf_a = np.searchsorted(a, both, side="right") / len(a)
    cdf_t = np.searchsorted(train, both, side="right") / len(train)
    stat = float(np.abs(cdf_a - cdf_t).max())
    en = len(a) * len(train) / (len(a) + len(train))
    p = kolmogorov_sf(math.sqrt(en) * stat)
    return DriftTest("ks_2samp_scores", stat, p, p < DRIFT_P_VALUE)
