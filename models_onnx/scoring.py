"""Pure helpers every recipe shares: lag stacking (the input schema), EWMA smoothing and the
out-of-fold threshold rule fitted on training rows only.

A model's input row is ``[x_t, x_{t-1}, ..., x_{t-lags}]`` (signals in manifest order within
each block); ``stack_lags`` builds it from consecutive rows, repeating the oldest row it has
when there is no earlier history (the same rule at training, evaluation and on the agent).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CV_FOLDS",
    "ewma",
    "input_names",
    "oof_residuals",
    "stack_lags",
]

F = NDArray[np.float64]
CV_FOLDS = 4  # contiguous blocks of the training rows; each is predicted by a fit on the rest


# Below this many values ``ewma`` runs a Python loop instead of ``scipy.signal.lfilter``:
# the agent smooths a window's rows (tens to hundreds), and importing scipy.signal (it pulls
# in scipy.stats, optimize, sparse, ...) costs the gateway ~50 MiB of memory (ADR 0033).
EWMA_LOOP_MAX = 4096


def ewma(x: F, span: int, start: float | None = None) -> F:
    """Exponentially weighted moving average (alpha = 2 / (span + 1)), causal.

    Both paths compute ``y[i] = a x[i] + c y[i-1]`` with ``c = -(a - 1)`` in the same order
    as lfilter's direct form II transposed, so they agree to the last bit (a test says so).
    """
    if span <= 1 or len(x) == 0:
        return x.astype(np.float64)
    a = 2.0 / (span + 1)
    acc = float(x[0]) if start is None else start
    values = np.asarray(x, dtype=np.float64)
    if len(values) <= EWMA_LOOP_MAX:
        return _ewma_loop(values, a, acc)
    from scipy.signal import lfilter  # noqa: PLC0415 - training-sized inputs only (see above)

    # y[i] = a x[i] + (1 - a) y[i-1] with y[-1] = acc, as one IIR filter (no Python loop)
    out, _ = lfilter([a], [1.0, a - 1.0], values, zi=[(1 - a) * acc])
    return np.asarray(out, dtype=np.float64)


def _ewma_loop(values: F, a: float, acc: float) -> F:
    """lfilter's recurrence for ``b = [a]``, ``a = [1, a - 1]``, state ``zi = (1 - a) acc``."""
    c = -(a - 1.0)
    z = (1.0 - a) * acc
    out = []
    for v in values.tolist():
        y = a * v + z
        z = c * y
        out.append(y)
    return np.asarray(out, dtype=np.float64)


def stack_lags(x: F, lags: int, history: F | None = None) -> F:
    """Rows ``[x_t, x_{t-1}, ..., x_{t-lags}]``; ``history`` holds earlier rows, oldest first."""
    if lags == 0:
        return x
    past = x[:0] if history is None else history[-lags:]
    full = np.concatenate([past, x]) if len(past) else x
    pad = lags - len(past)
    if pad > 0 and len(full):
        full = np.concatenate([np.repeat(full[:1], pad, axis=0), full])
    n = len(x)
    blocks = [full[lags - lag : lags - lag + n] for lag in range(lags + 1)]
    return np.concatenate(blocks, axis=1)


def input_names(signals: Sequence[str], lags: int) -> tuple[str, ...]:
    """Column names of the model input: ``Pressure``, ..., ``Pressure@t-1``, ..."""
    return tuple(s if lag == 0 else f"{s}@t-{lag}" for lag in range(lags + 1) for s in signals)


def oof_residuals(
    features: F,
    targets: F,
    fit_predict: Callable[[F, F, F], F],
    folds: int = CV_FOLDS,
) -> F:
    """Out-of-fold residuals ``targets - prediction`` over contiguous blocks of the rows.

    ``fit_predict(train_features, train_targets, test_features)`` fits on the rows outside a
    block and predicts the block; in-sample residuals are too small to set a limit on.
    """
    edges = np.linspace(0, len(features), folds + 1).astype(int)
    out = np.empty_like(targets)
    for a, b in itertools.pairwise(edges):
        keep = np.r_[0:a, b : len(features)]
        out[a:b] = targets[a:b] - fit_predict(features[keep], targets[keep], features[a:b])
    return out
