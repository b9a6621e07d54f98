"""Small onnx.helper builders shared by the hand-written model graphs.

Each recipe emits nodes that read a float32 input ``x`` [N, columns] and end in ``score`` [N]
(already divided by the alarm limit, so a smoothed score above 1 is an anomaly).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSET", "clipped", "const", "finish", "int64s", "standardise"]

OPSET = 17


def const(name: str, value: NDArray[np.float64] | float) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def int64s(name: str, values: Sequence[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(list(values), dtype=np.int64), name)


def standardise(
    prefix: str, source: str, mean: NDArray[np.float64], scale: NDArray[np.float64]
) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """``(source - mean) / scale`` as Sub + Mul (float: kept out of int8 on purpose)."""
    out = f"{prefix}z"
    nodes = [
        helper.make_node("Sub", [source, f"{prefix}mean"], [f"{prefix}xc"]),
        helper.make_node("Mul", [f"{prefix}xc", f"{prefix}inv_scale"], [out]),
    ]
    return nodes, [const(f"{prefix}mean", mean), const(f"{prefix}inv_scale", 1.0 / scale)], out


def clipped(
    prefix: str, z: str, bound: float
) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """``clip(z, -bound, bound)`` in float, ahead of a quantised MatMul: the int8 range is set to
    exactly this bound at calibration, so nothing is clipped that fp32 does not clip too."""
    out = f"{prefix}zc"
    node = helper.make_node("Clip", [z, f"{prefix}lo", f"{prefix}hi"], [out], name=f"{prefix}clip")
    return [node], [const(f"{prefix}lo", -bound), const(f"{prefix}hi", bound)], out


def finish(
    name: str,
    nodes: list[onnx.NodeProto],
    inits: list[TensorProto],
    columns: int,
    doc: str,
    extra_outputs: Sequence[tuple[str, int]] = (),
) -> onnx.ModelProto:
    """Wrap nodes into a checked model: input ``x`` [N, columns], output ``score`` [N]."""
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
    outputs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w]) for n, w in extra_outputs
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", columns])],
        outputs,
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="factoryops"
    )
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model
