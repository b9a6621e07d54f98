"""Shadow twin with a level term: ridge regression predicts each signal from the other signals
at t and from all signals at t-1..t-lags; beside its residuals, a Hotelling T2 of the current
row catches sustained level shifts that the lagged twin learns to follow.

a = mean_j(r_j^2) / norm_a, r_j = (zc_j - zhat_j) / sd_j, zc = z clipped to +-clip (sd_j from
blocked CV on the training rows); b = z_t' S^-1 z_t / d / norm_b on the *unclipped* z_t
(S the shrunk training correlation); norm_a, norm_b = the means of the out-of-fold training
values, so both read 1 on normal rows. score = max(a, level * b) / limit, with the limit set by
a rule (``limits.py``) on the EWMA-smoothed out-of-fold training score, so smoothed > 1 alarms.
The twin's MatMul is the only quantised layer; the clip and the level term stay in float
(docs/adr/0018-int8-range-in-float.md).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper

from models_onnx.errors import ModelError
from models_onnx.limits import limit_for
from models_onnx.onnx_graph import clipped, const, finish, int64s, standardise
from models_onnx.scoring import CV_FOLDS, ewma, oof_residuals, stack_lags

__all__ = ["LEVEL_SHRINK", "TwinFit", "TwinModel", "fit_twin", "fit_twin_base", "twin_onnx"]

F = NDArray[np.float64]
LEVEL_SHRINK = 0.1  # added to the correlation's diagonal: 400 rows of 8 drifting signals
LEVEL_MATMUL = "level_matmul"  # node name kept out of int8 (the level term stays float)


@dataclass(frozen=True, slots=True)
class TwinFit:
    """What the training rows give before the alarm settings (level weight, span, limit)."""

    lags: int
    clip: float  # |z| bound of the twin's (quantised) input, in training sd
    mean: F  # d*(lags+1), the signal means tiled per lag block
    scale: F  # d*(lags+1)
    matrix: F  # d*(lags+1) x d: residual = zc @ matrix + bias
    bias: F  # d
    residual_sd: F  # d, out-of-fold
    inv_corr: F  # d x d, the level term's (shrunk) inverse correlation
    norm_twin: float
    norm_level: float
    oof_twin: F  # out-of-fold training values of a and b (rows with full history)
    oof_level: F

    @property
    def signals(self) -> int:
        return int(self.matrix.shape[1])

    def residuals(self, xl: F) -> F:
        """Standardised residual per signal for lag-stacked rows (numpy reference)."""
        z = np.clip((xl - self.mean) / self.scale, -self.clip, self.clip)
        out: F = (z @ self.matrix + self.bias) / self.residual_sd
        return out

    def components(self, xl: F) -> tuple[F, F]:
        """The twin term ``a`` and the level term ``b`` of lag-stacked rows, both ~1 on normal."""
        r = self.residuals(xl)
        d = self.signals
        zt = (xl[:, :d] - self.mean[:d]) / self.scale[:d]
        t2 = np.einsum("ij,jk,ik->i", zt, self.inv_corr, zt) / d
        return (r * r).mean(axis=1) / self.norm_twin, t2 / self.norm_level


@dataclass(frozen=True, slots=True)
class TwinModel:
    fit: TwinFit
    level: float  # weight of the level term against the twin term (0: no level term)
    limit: float
    oof_score: F  # out-of-fold training score / limit (fusion fits on it)

    @property
    def lags(self) -> int:
        return self.fit.lags

    @property
    def mean(self) -> F:
        return self.fit.mean

    @property
    def matrix(self) -> F:
        return self.fit.matrix

    def score(self, xl: F) -> F:
        a, b = self.fit.components(xl)
        out: F = np.maximum(a, self.level * b) / self.limit
        return out

    def graph_nodes(
        self, prefix: str, source: str
    ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        f, p, d = self.fit, prefix, self.fit.signals
        nodes, inits, z = standardise(prefix, source, f.mean, f.scale)
        cn, ci, zc = clipped(prefix, z, f.clip)
        nodes += [
            *cn,
            helper.make_node("MatMul", [zc, f"{p}M"], [f"{p}zm"], name=f"{p}twin_matmul"),
            helper.make_node("Add", [f"{p}zm", f"{p}b"], [f"{p}e"]),
            helper.make_node("Mul", [f"{p}e", f"{p}inv_sd"], [f"{p}residuals"]),
            helper.make_node("Mul", [f"{p}residuals", f"{p}residuals"], [f"{p}r2"]),
            helper.make_node("ReduceMean", [f"{p}r2"], [f"{p}ms"], axes=[1], keepdims=0),
            helper.make_node("Mul", [f"{p}ms", f"{p}twin_scale"], [f"{p}raw"]),
        ]
        inits += [
            *ci,
            const(f"{p}M", f.matrix),
            const(f"{p}b", f.bias),
            const(f"{p}inv_sd", 1.0 / f.residual_sd),
            const(f"{p}twin_scale", 1.0 / (f.norm_twin * self.limit)),
        ]
        if self.level > 0:
            zt = z
            if f.lags:
                nodes.append(
                    helper.make_node(
                        "Slice", [z, f"{p}zero", f"{p}d", f"{p}one"], [f"{p}zt"], name=f"{p}now"
                    )
                )
                inits += [int64s(f"{p}zero", [0]), int64s(f"{p}d", [d])]
                zt = f"{p}zt"
            nodes += [
                helper.make_node("MatMul", [zt, f"{p}S"], [f"{p}zs"], name=f"{p}{LEVEL_MATMUL}"),
                helper.make_node("Mul", [f"{p}zs", zt], [f"{p}q"]),
                helper.make_node("ReduceSum", [f"{p}q", f"{p}one"], [f"{p}t2"], keepdims=0),
                helper.make_node("Mul", [f"{p}t2", f"{p}level_scale"], [f"{p}level"]),
                helper.make_node("Max", [f"{p}raw", f"{p}level"], [f"{p}score"]),
            ]
            inits += [
                const(f"{p}S", f.inv_corr),
                int64s(f"{p}one", [1]),
                const(f"{p}level_scale", self.level / (d * f.norm_level * self.limit)),
            ]
        else:
            nodes.append(helper.make_node("Identity", [f"{p}raw"], [f"{p}score"]))
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


def _inv_corr(z: F) -> F:
    d = z.shape[1]
    corr = np.atleast_2d(np.cov(z, rowvar=False)) if len(z) > 1 else np.eye(d)
    return np.asarray(np.linalg.inv(corr + LEVEL_SHRINK * np.eye(d)), dtype=np.float64)


def _oof_level(x: F, folds: int = CV_FOLDS) -> F:
    """Blocked out-of-fold T2 / d of the rows: each block standardised by the others' statistics
    (a signal that drifts across the training rows raises its own limit, not false alarms)."""
    n, d = x.shape
    out = np.empty(n)
    edges = np.linspace(0, n, folds + 1).astype(int)
    for lo, hi in itertools.pairwise(edges):
        rest = x[np.r_[0:lo, hi:n]]
        mean, sd = rest.mean(axis=0), rest.std(axis=0)
        sd[sd < 1e-9] = 1.0
        z = (x[lo:hi] - mean) / sd
        out[lo:hi] = np.einsum("ij,jk,ik->i", z, _inv_corr((rest - mean) / sd), z) / d
    return out


def fit_twin_base(x: F, *, lags: int = 2, ridge: float = 1.0, clip: float = 16.0) -> TwinFit:
    """Fit on consecutive normal rows ``x`` (n x d): the twin, its residual sd, the level term."""
    n, d = x.shape
    need = 4 * (d * (lags + 1) + 2)
    if n < need or not np.isfinite(x).all():
        raise ModelError(
            f"the twin needs at least {need} finite training rows, got {n}",
            hint="train on more normal operation, or fewer lags",
        )
    if clip <= 0:
        raise ModelError(f"clip={clip} must be positive (a bound in training sd)")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant signal carries no information
    mean_l, scale_l = np.tile(mean, lags + 1), np.tile(scale, lags + 1)
    z = np.clip((stack_lags(x, lags)[lags:] - mean_l) / scale_l, -clip, clip)
    target = z[:, :d]

    def fit_predict(tf: F, tt: F, xf: F) -> F:
        m, b = _ridge_all(tf, tt, ridge, d)
        return xf[:, :d] - (xf @ m + b)  # prediction = z - residual

    oof = oof_residuals(z, target, fit_predict)
    sd = np.maximum(oof.std(axis=0), 1e-6)
    matrix, bias = _ridge_all(z, target, ridge, d)
    twin = ((oof / sd) ** 2).mean(axis=1)
    level = _oof_level(x)[lags:]
    norm_twin = float(max(twin.mean(), 1e-9))
    norm_level = float(max(level.mean(), 1e-9))
    return TwinFit(
        lags,
        float(clip),
        mean_l,
        scale_l,
        matrix,
        bias,
        sd,
        _inv_corr((x - mean) / scale),
        norm_twin,
        norm_level,
        twin / norm_twin,
        level / norm_level,
    )


def finish_twin(fit: TwinFit, *, level: float, span: int, limit: str) -> TwinModel:
    """Set the alarm limit of ``fit`` for a level weight, EWMA span and limit rule."""
    raw = np.maximum(fit.oof_twin, level * fit.oof_level)
    value = limit_for(ewma(raw, span), limit)
    return TwinModel(fit, level, value, raw / value)


def fit_twin(
    x: F,
    *,
    lags: int = 2,
    ridge: float = 1.0,
    clip: float = 16.0,
    level: float = 0.1,
    span: int = 10,
    limit: str = "max",
) -> TwinModel:
    """Fit on consecutive normal rows ``x`` (n x d) and set the limit from training rows."""
    base = fit_twin_base(x, lags=lags, ridge=ridge, clip=clip)
    return finish_twin(base, level=level, span=span, limit=limit)


def twin_onnx(m: TwinModel, signals: list[str]) -> onnx.ModelProto:
    """Input ``x`` [N, d*(lags+1)] (see ``scoring.stack_lags``), outputs ``score`` and
    ``residuals`` [N, d] (the standardised twin residual of each signal)."""
    d = m.fit.signals
    nodes, inits, _ = m.graph_nodes("", "x")  # with no prefix it ends in "score"
    doc = (
        f"shadow twin over {', '.join(signals)}; ridge on others at t and {m.lags} lags; "
        f"level term weight {m.level}"
    )
    return finish("twin", nodes, inits, len(m.mean), doc, extra_outputs=[("residuals", d)])
