"""A merged fleet model, calibrated for one site, written as ONNX and a manifest.

The graph is the autoencoder recipe's (``autoencoder_onnx``), fp32: the merged weights were
never trained against int8 rounding, and a fleet model is published once per site (the
int8 step stays with ``factoryops model quantize``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from models_onnx.autoencoder import AutoencoderModel, autoencoder_onnx
from models_onnx.datasets import read_table
from models_onnx.errors import ModelError
from models_onnx.manifest import Manifest, sha256_file, write_manifest
from models_onnx.scoring import input_names, stack_lags

__all__ = ["read_normal_csv", "write_fleet_model"]


def read_normal_csv(path: Path, signals: list[str]) -> NDArray[np.float64]:
    """Rows of ``signals`` from a SKAB-format CSV of normal operation (';', datetime first)."""
    table = read_table(path)
    missing = [s for s in signals if s not in table.signals]
    if missing:
        raise ModelError(f"{path}: no column {missing[0]!r} (has {list(table.signals)})")
    x = table.values[:, [table.signals.index(s) for s in signals]]
    if len(x) < 50 or not np.isfinite(x).all():
        raise ModelError(f"{path}: {len(x)} rows; calibration needs 50 finite rows or more")
    return x


def write_fleet_model(
    model: AutoencoderModel,
    signals: list[str],
    out_dir: Path,
    *,
    model_id: str,
    normal: NDArray[np.float64],
    span: int,
    threshold: float = 1.0,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``<model_id>.onnx`` and its manifest; the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = autoencoder_onnx(model, signals)
    onnx_path = out_dir / f"{model_id}.onnx"
    onnx.save(graph, onnx_path)
    xl = stack_lags(normal, model.lags)
    sample = np.quantile(model.score(xl), np.linspace(0, 1, 101)).round(6)
    manifest = Manifest(
        id=model_id,
        version="1",
        kind="autoencoder",
        onnx_file=onnx_path.name,
        sha256=sha256_file(onnx_path),
        signals=tuple(signals),
        threshold=threshold,
        smoothing_span=span,
        training_rows=len(normal),
        training_sha256=hashlib.sha256(np.ascontiguousarray(normal).tobytes()).hexdigest(),
        training_scores=tuple(float(v) for v in sample),
        metrics=metrics or {},
        lags=model.lags,
        inputs=input_names(signals, model.lags),
        scaling={
            s: (float(m), float(v))
            for s, m, v in zip(signals, normal.mean(axis=0), normal.std(axis=0), strict=True)
        },
        outputs=tuple(o.name for o in graph.graph.output),
    )
    path = out_dir / f"{model_id}.manifest.json"
    write_manifest(path, manifest)
    return path
