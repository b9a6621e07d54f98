"""MLP autoencoder (scikit-learn MLPRegressor, X -> X through a narrow tanh bottleneck) on the
lag-stacked, standardised rows; the ONNX graph is written from the learned weights.

score = mean_c(e_c^2) / limit with e_c the reconstruction error of column c divided by its
out-of-fold standard deviation; the limit is a rule (``limits.py``) on the smoothed
out-of-fold score.
(skl2onnx mis-shapes MLPRegressor outputs, so the graph is built with onnx.helper.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor

from models_onnx.errors import ModelError
from models_onnx.limits import limit_for
from models_onnx.onnx_graph import clipped, const, finish, standardise
from models_onnx.scoring import ewma, oof_residuals, stack_lags

__all__ = ["AutoencoderModel", "autoencoder_onnx", "fit_autoencoder", "forward"]

F = NDArray[np.float64]
HIDDEN = (12, 3, 12)  # 3-unit bottleneck; small enough for one gateway core


@dataclass(frozen=True, slots=True)
class AutoencoderModel:
    lags: int
    mean: F
    scale: F
    weights: tuple[F, ...]
    biases: tuple[F, ...]
    error_sd: F
    limit: float
    oof_score: F
    clip: float = 16.0  # |z| bound of the network's (quantised) input; the error sees all of z

    def errors(self, xl: F) -> F:
        z = (xl - self.mean) / self.scale
        zc = np.clip(z, -self.clip, self.clip)
        out: F = (z - forward(self.weights, self.biases, zc)) / self.error_sd
        return out

    def score(self, xl: F) -> F:
        e = self.errors(xl)
        out: F = (e * e).mean(axis=1) / self.limit
        return out

    def graph_nodes(
        self, prefix: str, source: str
    ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        p = prefix
        nodes, inits, z = standardise(p, source, self.mean, self.scale)
        cn, ci, h = clipped(p, z, self.clip)
        nodes, inits = nodes + cn, inits + ci
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            nodes += [
                helper.make_node("MatMul", [h, f"{p}W{i}"], [f"{p}m{i}"]),
                helper.make_node("Add", [f"{p}m{i}", f"{p}b{i}"], [f"{p}a{i}"]),
            ]
            inits += [const(f"{p}W{i}", w), const(f"{p}b{i}", b)]
            if i < last:
                nodes.append(helper.make_node("Tanh", [f"{p}a{i}"], [f"{p}h{i}"]))
                h = f"{p}h{i}"
        nodes += [
            helper.make_node("Sub", [z, f"{p}a{last}"], [f"{p}e"]),
            helper.make_node("Mul", [f"{p}e", f"{p}inv_sd"], [f"{p}errors"]),
            helper.make_node("Mul", [f"{p}errors", f"{p}errors"], [f"{p}e2"]),
            helper.make_node("ReduceMean", [f"{p}e2"], [f"{p}ms"], axes=[1], keepdims=0),
            helper.make_node("Div", [f"{p}ms", f"{p}limit"], [f"{p}score"]),
        ]
        inits += [
            const(f"{p}inv_sd", 1.0 / self.error_sd),
            const(f"{p}limit", self.limit),
        ]
        return nodes, inits, f"{p}score"


def forward(weights: tuple[F, ...], biases: tuple[F, ...], z: F) -> F:
    h = z
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.tanh(h)
    return h


def _fit(z: F, seed: int) -> tuple[tuple[F, ...], tuple[F, ...]]:
    net = MLPRegressor(
        hidden_layer_sizes=HIDDEN,
        activation="tanh",
        alpha=1e-3,
        learning_rate_init=3e-3,
        max_iter=400,
        random_state=seed,
    )
    with warnings.catch_warnings():
        # a few hundred epochs is the budget on purpose; the limit absorbs the rest
        warnings.simplefilter("ignore", ConvergenceWarning)
        net.fit(z, z)
    ws = tuple(np.asarray(w, dtype=np.float64) for w in net.coefs_)
    bs = tuple(np.asarray(b, dtype=np.float64) for b in net.intercepts_)
    return ws, bs


def fit_autoencoder(
    x: F, *, lags: int = 2, span: int = 10, limit: str = "max", seed: int = 0
) -> AutoencoderModel:
    n = len(x)
    if n < 40 or not np.isfinite(x).all():
        raise ModelError(
            f"the autoencoder needs at least 40 finite training rows, got {n}",
            hint="train on more normal operation",
        )
    mean = np.tile(x.mean(axis=0), lags + 1)
    sd = x.std(axis=0)
    sd[sd < 1e-9] = 1.0
    scale = np.tile(sd, lags + 1)
    z = (stack_lags(x, lags)[lags:] - mean) / scale

    def fit_predict(tf: F, tt: F, xf: F) -> F:
        ws, bs = _fit(tf, seed)
        return forward(ws, bs, xf)

    oof = oof_residuals(z, z, fit_predict)
    err_sd = np.maximum(oof.std(axis=0), 1e-6)
    ws, bs = _fit(z, seed)
    raw = ((oof / err_sd) ** 2).mean(axis=1)
    value = limit_for(ewma(raw, span), limit)
    return AutoencoderModel(lags, mean, scale, ws, bs, err_sd, value, raw / value)


def autoencoder_onnx(m: AutoencoderModel, signals: list[str]) -> onnx.ModelProto:
    """Input ``x`` [N, d*(lags+1)], outputs ``score`` [N] and ``errors`` [N, d*(lags+1)]."""
    nodes, inits, _ = m.graph_nodes("", "x")
    doc = f"MLP autoencoder {HIDDEN} over {', '.join(signals)} with {m.lags} lags"
    return finish(
        "autoencoder", nodes, inits, len(m.mean), doc, extra_outputs=[("errors", len(m.mean))]
    )
