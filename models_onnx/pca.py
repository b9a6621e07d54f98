"""PCA T-squared + Q (SPE) anomaly detector: fit in numpy, exported as an ONNX graph.

score = max(T^2 / T^2_lim, Q / Q_lim) with both limits taken as a quantile of the training
scores; a row is anomalous when its (smoothed) score exceeds 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from models_onnx.errors import ModelError

__all__ = ["PcaModel", "fit_pca", "to_onnx"]

F = NDArray[np.float64]
OPSET = 17


@dataclass(frozen=True, slots=True)
class PcaModel:
    mean: F
    scale: F
    components: F  # d x k
    eigenvalues: F  # k
    t2_limit: float
    q_limit: float
    clip: float = 16.0  # |z| bound of the projection's (quantised) input; Q sees all of z

    def score(self, x: F) -> F:
        """The numpy reference of the ONNX graph (tests compare the two)."""
        z = (x - self.mean) / self.scale
        t = np.clip(z, -self.clip, self.clip) @ self.components
        t2 = (t * t / self.eigenvalues).sum(axis=1)
        e = z - t @ self.components.T
        q = (e * e).sum(axis=1)
        out: F = np.maximum(t2 / self.t2_limit, q / self.q_limit)
        return out


def fit_pca(x: F, *, explained: float = 0.85, quantile: float = 0.99) -> PcaModel:
    """Fit on normal rows ``x`` (n x d); keep components explaining ``explained`` variance."""
    if x.ndim != 2 or x.shape[0] < x.shape[1] + 2:
        raise ModelError(
            f"need at least {x.shape[1] + 2} training rows of {x.shape[1]} signals",
            hint="train on more normal operation",
        )
    if not np.isfinite(x).all():
        raise ModelError("training data holds NaN or infinite values")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant signal carries no information; do not divide by 0
    z = (x - mean) / scale
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    lam = s * s / (len(z) - 1)
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), explained) + 1)
    k = min(k, len(lam))
    lam_k = np.maximum(lam[:k], 1e-12)
    p = vt[:k].T
    t = z @ p
    t2 = (t * t / lam_k).sum(axis=1)
    e = z - t @ p.T
    q = (e * e).sum(axis=1)
    return PcaModel(
        mean,
        scale,
        p,
        lam_k,
        float(max(np.quantile(t2, quantile), 1e-9)),
        float(max(np.quantile(q, quantile), 1e-9)),
    )


def to_onnx(m: PcaModel, signals: list[str]) -> onnx.ModelProto:
    """The model as an ONNX graph: input ``x`` [N, d] float32, output ``score`` [N]."""
    d, k = m.components.shape

    def const(name: str, value: NDArray[np.float64] | float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    inits = [
        const("mean", m.mean),
        const("inv_scale", 1.0 / m.scale),
        const("P", m.components),
        const("Pt", m.components.T),
        const("inv_lambda", 1.0 / m.eigenvalues),
        const("t2_limit", m.t2_limit),
        const("q_limit", m.q_limit),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        const("lo", -m.clip),
        const("hi", m.clip),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xc"]),
        helper.make_node("Mul", ["xc", "inv_scale"], ["z"]),
        helper.make_node("Clip", ["z", "lo", "hi"], ["zc"], name="clip"),
        helper.make_node("MatMul", ["zc", "P"], ["t"]),
        helper.make_node("Mul", ["t", "t"], ["t_sq"]),
        helper.make_node("Mul", ["t_sq", "inv_lambda"], ["t_w"]),
        helper.make_node("ReduceSum", ["t_w", "axis1"], ["t2"], keepdims=0),
        helper.make_node("MatMul", ["t", "Pt"], ["z_hat"]),
        helper.make_node("Sub", ["z", "z_hat"], ["e"]),
        helper.make_node("Mul", ["e", "e"], ["e_sq"]),
        helper.make_node("ReduceSum", ["e_sq", "axis1"], ["q"], keepdims=0),
        helper.make_node("Div", ["t2", "t2_limit"], ["t2_n"]),
        helper.make_node("Div", ["q", "q_limit"], ["q_n"]),
        helper.make_node("Max", ["t2_n", "q_n"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pca_t2_q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="factoryops"
    )
    model.doc_string = f"PCA T2+Q over {', '.join(signals)}; {k} of {d} components"
    onnx.checker.check_model(model)
    return model
