"""Model recipes: train -> ONNX (fp32) -> static int8 quantisation -> manifest.

Quantisation is calibrated on the training rows only (onnxruntime.quantization, QDQ).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from models_onnx.manifest import Manifest, sha256_file, write_manifest
from models_onnx.pca import fit_pca, to_onnx

__all__ = ["build_pca", "ewma", "quantize_model"]


def ewma(x: NDArray[np.float64], span: int, start: float | None = None) -> NDArray[np.float64]:
    """Exponentially weighted moving average (alpha = 2 / (span + 1)), causal."""
    if span <= 1 or len(x) == 0:
        return x.astype(np.float64)
    a = 2.0 / (span + 1)
    out = np.empty(len(x), dtype=np.float64)
    acc = float(x[0]) if start is None else start
    for i, v in enumerate(x):
        acc = a * float(v) + (1 - a) * acc
        out[i] = acc
    return out


class _Rows(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no stubs
    def __init__(self, rows: NDArray[np.float32], batch: int = 64) -> None:
        self._it: Iterator[dict[str, NDArray[np.float32]]] = (
            {"x": rows[i : i + batch]} for i in range(0, len(rows), batch)
        )

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._it, None)


class _DropPreprocessAdvice(logging.Filter):
    """onnxruntime advises pre-processing on every call even after we ran it; drop that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage() and (
            "run pre-processing" not in record.getMessage()
        )


def quantize_model(fp32: onnx.ModelProto, calibration: NDArray[np.float64], out: Path) -> None:
    """Static int8 (QDQ) quantisation calibrated on ``calibration`` rows."""
    advice = _DropPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        _quantize(fp32, calibration, out)
    finally:
        logging.getLogger().removeFilter(advice)


def _quantize(fp32: onnx.ModelProto, calibration: NDArray[np.float64], out: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "fp32.onnx"
        onnx.save(fp32, src)
        quantize_static(
            str(src),
            str(out),
            _Rows(calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )


def build_pca(
    x: NDArray[np.float64],
    signals: Sequence[str],
    out_dir: Path,
    *,
    model_id: str,
    version: str = "1",
    explained: float = 0.85,
    quantile: float = 0.99,
    smoothing_span: int = 5,
) -> tuple[Path, Path]:
    """Train, export fp32 and int8 ONNX with one manifest each; returns both manifests."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = fit_pca(x, explained=explained, quantile=quantile)
    graph = to_onnx(model, list(signals))
    train_hash = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
    sample = np.quantile(model.score(x), np.linspace(0, 1, 101)).round(6)
    paths = []
    for kind in ("fp32", "int8"):
        onnx_path = out_dir / f"{model_id}.{kind}.onnx"
        if kind == "fp32":
            onnx.save(graph, onnx_path)
        else:
            quantize_model(graph, x, onnx_path)
        manifest = Manifest(
            id=model_id,
            version=version,
            kind="pca_t2_q",
            onnx_file=onnx_path.name,
            sha256=sha256_file(onnx_path),
            signals=tuple(signals),
            smoothing_span=smoothing_span,
            quantized=kind == "int8",
            training_rows=len(x),
            training_sha256=train_hash,
            training_scores=tuple(float(v) for v in sample),
            metrics={
                "components": int(model.components.shape[1]),
                "explained": explained,
                "quantile": quantile,
            },
        )
        path = out_dir / f"{model_id}.{kind}.manifest.json"
        write_manifest(path, manifest)
        paths.append(path)
    return paths[0], paths[1]
