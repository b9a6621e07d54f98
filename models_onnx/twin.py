"""Shadow twin: ridge regression predicts each signal from the other signals at t and from
all signals at t-1..t-lags; its out-of-fold standardised residuals make the anomaly score.

score = mean_j(r_j^2) / limit, r_j = (z_j - zhat_j) / sd_j (sd_j from blocked CV on the
training rows) and limit = max of the EWMA-smoothed out-of-fold score, so smoothed > 1 alarms.
The graph is one MatMul + Add: residual = z @ M + b with M = selector - W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper

from models_onnx.errors import ModelError
from models_onnx.onnx_graph import const, finish, standardise
from models_onnx.scoring import oof_residuals, smoothed_limit, stack_lags

__all__ = ["TwinModel", "fit_twin", "twin_onnx"]

F = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TwinModel:
    lags: int
    mean: F  # d*(lags+1), the signal means tiled per lag block
    scale: F  # d*(lags+1)
    matrix: F  # d*(lags+1) x d: residual = z @ matrix + bias
    bias: F  # d
    residual_sd: F  # d, out-of-fold
    limit: float
    oof_score: F  # out-of-fold training score / limit (fusion fits on it)

    def residuals(self, xl: F) -> F:
        """Standardised residual per signal for lag-stacked rows (numpy reference)."""
        z = (xl - self.mean) / self.scale
        out: F = (z @ self.matrix + self.bias) / self.residual_sd
        return out

    def score(self, xl: F) -> F:
        r = self.residuals(xl)
        out: F = (r * r).mean(axis=1) / self.limit
        return out

    def graph_nodes(
        self, prefix: str, source: str
    ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        nodes, inits, z = standardise(prefix, source, self.mean, self.scale)
        p = prefix
        nodes += [
            helper.make_node("MatMul", [z, f"{p}M"], [f"{p}zm"]),
            helper.make_node("Add", [f"{p}zm", f"{p}b"], [f"{p}e"]),
            helper.make_node("Mul", [f"{p}e", f"{p}inv_sd"], [f"{p}residuals"]),
            helper.make_node("Mul", [f"{p}residuals", f"{p}residuals"], [f"{p}r2"]),
            helper.make_node("ReduceMean", [f"{p}r2"], [f"{p}ms"], axes=[1], keepdims=0),
            helper.make_node("Div", [f"{p}ms", f"{p}limit"], [f"{p}score"]),
        ]
        inits += [
            const(f"{p}M", self.matrix),
            const(f"{p}b", self.bias),
            const(f"{p}inv_sd", 1.0 / self.residual_sd),
            const(f"{p}limit", self.limit),
        ]
        return nodes, inits, f"{p}score"


def _ridge_all(features: F, targets: F, ridge: float, d: int) -> tuple[F, F]:
    """One ridge fit per signal j, without z_j(t) among its inputs; returns (matrix, bias)."""
    cols = features.shape[1]
    matrix = np.zeros((cols, d))
    bias = np.zeros(d)
    ones = np.ones((len(features), 1))
    for j in range(d):
        keep = [c for c in range(cols) if c != j]
        a = np.hstack([features[:, keep], ones])
        reg = ridge * np.eye(a.shape[1])
        reg[-1, -1] = 0.0  # the intercept is not shrunk
        w = np.linalg.solve(a.T @ a + reg, a.T @ targets[:, j])
        matrix[keep, j] = -w[:-1]
        matrix[j, j] = 1.0
        bias[j] = -w[-1]
    return matrix, bias


def fit_twin(
    x: F, *, lags: int = 2, ridge: float = 1.0, span: int = 10, quantile: float = 1.0
) -> TwinModel:
    """Fit on consecutive normal rows ``x`` (n x d)."""
    n, d = x.shape
    if n < 4 * (d * (lags + 1) + 2) or not np.isfinite(x).all():
        raise ModelError(
            f"the twin needs at least {4 * (d * (lags + 1) + 2)} finite training rows, got {n}",
            hint="train on more normal operation, or fewer lags",
        )
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant signal carries no information
    mean_l, scale_l = np.tile(mean, lags + 1), np.tile(scale, lags + 1)
    z = (stack_lags(x, lags)[lags:] - mean_l) / scale_l  # drop rows with padded history
    target = z[:, :d]

    def fit_predict(tf: F, tt: F, xf: F) -> F:
        m, b = _ridge_all(tf, tt, ridge, d)
        return xf[:, :d] - (xf @ m + b)  # prediction = z - residual

    oof = oof_residuals(z, target, fit_predict)
    sd = np.maximum(oof.std(axis=0), 1e-6)
    matrix, bias = _ridge_all(z, target, ridge, d)
    raw = ((oof / sd) ** 2).mean(axis=1)
    limit = smoothed_limit(raw, span, quantile)
    return TwinModel(lags, mean_l, scale_l, matrix, bias, sd, limit, raw / limit)


def twin_onnx(m: TwinModel, signals: list[str]) -> onnx.ModelProto:
    """Input ``x`` [N, d*(lags+1)] (see ``scoring.stack_lags``), outputs ``score`` and
    ``residuals`` [N, d] (the standardised twin residual of each signal)."""
    d = m.matrix.shape[1]
    nodes, inits, _ = m.graph_nodes("", "x")  # with no prefix it ends in "score"
    doc = f"shadow twin over {', '.join(signals)}; ridge on others at t and {m.lags} lags"
    return finish("twin", nodes, inits, len(m.mean), doc, extra_outputs=[("residuals", d)])
