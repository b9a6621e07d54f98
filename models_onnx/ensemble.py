"""Score fusion: the mean of the twin's and the autoencoder's limit-normalised scores, with a
limit of its own fitted on their out-of-fold training scores (one graph, one input schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper

from models_onnx.autoencoder import AutoencoderModel, fit_autoencoder
from models_onnx.limits import limit_for
from models_onnx.onnx_graph import const, finish
from models_onnx.scoring import ewma
from models_onnx.twin import TwinModel, fit_twin

__all__ = ["EnsembleModel", "ensemble_onnx", "fit_ensemble"]

F = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class EnsembleModel:
    twin: TwinModel
    autoencoder: AutoencoderModel
    limit: float

    @property
    def lags(self) -> int:
        return self.twin.lags

    @property
    def mean(self) -> F:
        return self.twin.mean

    def score(self, xl: F) -> F:
        out: F = (self.twin.score(xl) + self.autoencoder.score(xl)) / (2 * self.limit)
        return out


def fit_ensemble(
    x: F, *, lags: int = 2, span: int = 10, limit: str = "max", seed: int = 0, **twin: Any
) -> EnsembleModel:
    """``twin`` passes the twin's own settings (ridge, clip, level) through."""
    t = fit_twin(x, lags=lags, span=span, limit=limit, **twin)
    ae = fit_autoencoder(x, lags=lags, span=span, limit=limit, seed=seed)
    fused = (t.oof_score + ae.oof_score) / 2
    return EnsembleModel(t, ae, limit_for(ewma(fused, span), limit))


def ensemble_onnx(m: EnsembleModel, signals: list[str]) -> onnx.ModelProto:
    """Input ``x`` [N, d*(lags+1)]; output ``score`` [N] and the twin's ``twin_residuals``."""
    n1, i1, s1 = m.twin.graph_nodes("twin_", "x")
    n2, i2, s2 = m.autoencoder.graph_nodes("ae_", "x")
    nodes = [
        *n1,
        *n2,
        helper.make_node("Add", [s1, s2], ["fused"]),
        helper.make_node("Mul", ["fused", "fuse_scale"], ["score"]),
    ]
    inits = [*i1, *i2, const("fuse_scale", 1.0 / (2 * m.limit))]
    d = m.twin.matrix.shape[1]
    doc = f"twin + autoencoder fusion over {', '.join(signals)} with {m.lags} lags"
    return finish("ensemble", nodes, inits, len(m.mean), doc, extra_outputs=[("twin_residuals", d)])
