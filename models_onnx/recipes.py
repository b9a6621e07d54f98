"""Model recipes: train -> ONNX (fp32) -> static int8 quantisation -> manifest.

Every kind trains on normal rows only and writes ``ID.fp32.onnx`` and ``ID.int8.onnx``, each
with a manifest. Quantisation is calibrated on the training rows and the recipe's clip bound
only (onnxruntime, QDQ; docs/adr/0018-int8-range-in-float.md).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from models_onnx.autoencoder import AutoencoderModel, autoencoder_onnx, fit_autoencoder
from models_onnx.ensemble import EnsembleModel, ensemble_onnx, fit_ensemble
from models_onnx.errors import ModelError
from models_onnx.limits import LIMIT_RULES
from models_onnx.manifest import Manifest, sha256_file, write_manifest
from models_onnx.pca import PcaModel, fit_pca, to_onnx
from models_onnx.scoring import ewma, input_names, stack_lags
from models_onnx.twin import LEVEL_MATMUL, TwinModel, fit_twin, twin_onnx

__all__ = [
    "KINDS",
    "Recipe",
    "Scorer",
    "build",
    "build_pca",
    "ewma",
    "fit_model",
    "quantize_model",
]

F = NDArray[np.float64]
KINDS = ("pca", "autoencoder", "twin", "ensemble")
_MANIFEST_KIND = {
    "pca": "pca_t2_q",
    "autoencoder": "autoencoder",
    "twin": "twin",
    "ensemble": "ensemble",
}


@dataclass(frozen=True, slots=True)
class Recipe:
    """Hyper-parameters of one model. The defaults are what the nested selection picks on all
    the visible SKAB files (docs/models.md); ``factoryops model eval`` chooses them again in
    an inner loop for every file it scores."""

    kind: str = "twin"
    lags: int = 3  # twin / autoencoder / ensemble: rows of history in the input
    span: int = 20  # EWMA span of the alarm smoothing
    limit: str = "pot3"  # rule on the smoothed out-of-fold training score (limits.py)
    ridge: float = 1.0  # twin: regularisation of each signal's regression
    level: float = 0.03  # twin: weight of the level (T2) term against the residual term
    clip: float = 8.0  # |z| bound (training sd) of the quantised input; beyond it, float
    explained: float = 0.85  # pca only
    pca_quantile: float = 0.99  # pca only: in-sample limits of T2 and Q
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0 <= self.lags <= 16:
            raise ModelError(f"lags={self.lags} is outside 0..16")
        if self.limit not in LIMIT_RULES:
            raise ModelError(f"limit {self.limit!r} is not one of {', '.join(LIMIT_RULES)}")
        if not (self.span >= 1 and self.ridge > 0 and self.level >= 0 and self.clip > 0):
            raise ModelError(
                f"span={self.span}, ridge={self.ridge}, level={self.level}, clip={self.clip}: "
                "span >= 1, ridge > 0, level >= 0 and clip > 0 are required"
            )

    def label(self) -> str:
        """Short text naming the settings (tables, logs)."""
        if self.kind == "pca":
            return f"pca span {self.span}"
        return (
            f"{self.kind} lags {self.lags} ridge {self.ridge:g} level {self.level:g} "
            f"clip {self.clip:g} span {self.span} limit {self.limit}"
        )

    @property
    def input_lags(self) -> int:
        return 0 if self.kind == "pca" else self.lags


class Scorer(Protocol):
    def score(self, xl: F) -> F: ...


def fit_model(recipe: Recipe, x: F) -> Scorer:
    """The numpy model of ``recipe`` fitted on normal rows ``x`` (its ``score`` is the graph's
    reference: smoothed > 1 alarms)."""
    r = recipe
    if r.kind == "pca":
        return replace(fit_pca(x, explained=r.explained, quantile=r.pca_quantile), clip=r.clip)
    twin = {"ridge": r.ridge, "clip": r.clip, "level": r.level}
    if r.kind == "twin":
        return fit_twin(x, lags=r.lags, span=r.span, limit=r.limit, **twin)
    if r.kind == "autoencoder":
        a = fit_autoencoder(x, lags=r.lags, span=r.span, limit=r.limit, seed=r.seed)
        return replace(a, clip=r.clip)
    return fit_ensemble(x, lags=r.lags, span=r.span, limit=r.limit, seed=r.seed, **twin)


def _train(recipe: Recipe, x: F, signals: list[str]) -> tuple[Scorer, onnx.ModelProto, str]:
    m = fit_model(recipe, x)
    if isinstance(m, PcaModel):
        return m, to_onnx(m, signals), f"{m.components.shape[1]} components"
    if isinstance(m, TwinModel):
        return m, twin_onnx(m, signals), f"limit {m.limit:.4g}"
    if isinstance(m, AutoencoderModel):
        return m, autoencoder_onnx(m, signals), f"limit {m.limit:.4g}"
    assert isinstance(m, EnsembleModel)  # fit_model returns one of four kinds
    return m, ensemble_onnx(m, signals), f"limit {m.limit:.4g}"


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


def quantize_model(fp32: onnx.ModelProto, calibration: F, out: Path, *, clip: float) -> None:
    """Static int8 (QDQ) quantisation of the MatMul inputs, calibrated on ``calibration``
    (training rows as wide as the graph's input ``x``, already lag-stacked).

    Every graph clips its standardised input to +-``clip`` training sd in float before the
    first quantised MatMul, and computes what must see a larger value (the level term, the
    reconstruction error, Q) in float from the unclipped input. MinMax calibration on normal
    rows alone would set the int8 range to what normal looks like and clip a fault silently
    (issue 19: an accelerometer at 112 sd); the reader therefore also yields two rows at
    mean +- ``clip`` sd of every column, so the int8 range is the clip range exactly.
    """
    mean, sd = calibration.mean(axis=0), calibration.std(axis=0)
    sd = np.where(sd < 1e-9, 1.0, sd)
    bounds = np.stack([mean - clip * sd, mean + clip * sd])
    rows = np.concatenate([calibration, bounds])
    advice = _DropPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        _quantize(fp32, rows, out)
    finally:
        logging.getLogger().removeFilter(advice)


def _quantize(fp32: onnx.ModelProto, calibration: F, out: Path) -> None:
    # the pre-processor's sessions warn about each initializer it folds away: noise, not news
    ort.set_default_logger_severity(3)
    float_only = [n.name for n in fp32.graph.node if n.name.endswith(LEVEL_MATMUL)]
    with tempfile.TemporaryDirectory() as d:
        src, pre = Path(d) / "fp32.onnx", Path(d) / "pre.onnx"
        onnx.save(fp32, src)
        # no graph optimisation: a MatMul fused with its Add into a Gemm would get its output
        # quantised too, clipping the large residuals an anomaly makes
        quant_pre_process(str(src), str(pre), skip_optimization=True)
        quantize_static(
            str(pre),
            str(out),
            _Rows(calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=float_only,
            per_channel=True,
            # a MatMul's output (a residual) must stay float: quantised, its range would be
            # the calibration's and a large residual would be clipped
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )


def build(
    recipe: Recipe,
    x: F,
    signals: Sequence[str],
    out_dir: Path,
    *,
    model_id: str,
    version: str = "1",
) -> tuple[Path, Path]:
    """Train one kind on normal rows ``x`` (n x d); write fp32 and int8 ONNX with manifests."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sig = list(signals)
    model, graph, summary = _train(recipe, x, sig)
    lags = recipe.input_lags
    xl = stack_lags(x, lags)
    train_hash = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
    sample = np.quantile(model.score(xl), np.linspace(0, 1, 101)).round(6)
    sd = x.std(axis=0)
    scaling = {s: (float(m), float(v)) for s, m, v in zip(sig, x.mean(axis=0), sd, strict=True)}
    params: dict[str, Any] = {
        "recipe": {k: getattr(recipe, k) for k in Recipe.__slots__},
        "summary": summary,
    }
    paths = []
    for kind in ("fp32", "int8"):
        onnx_path = out_dir / f"{model_id}.{kind}.onnx"
        if kind == "fp32":
            onnx.save(graph, onnx_path)
        else:
            quantize_model(graph, xl, onnx_path, clip=recipe.clip)
        manifest = Manifest(
            id=model_id,
            version=version,
            kind=_MANIFEST_KIND[recipe.kind],
            onnx_file=onnx_path.name,
            sha256=sha256_file(onnx_path),
            signals=tuple(sig),
            smoothing_span=recipe.span,
            quantized=kind == "int8",
            training_rows=len(x),
            training_sha256=train_hash,
            training_scores=tuple(float(v) for v in sample),
            metrics=params,
            lags=lags,
            inputs=input_names(sig, lags),
            scaling=scaling,
            outputs=tuple(o.name for o in graph.graph.output),
        )
        path = out_dir / f"{model_id}.{kind}.manifest.json"
        write_manifest(path, manifest)
        paths.append(path)
    return paths[0], paths[1]


def build_pca(
    x: F,
    signals: Sequence[str],
    out_dir: Path,
    *,
    model_id: str,
    version: str = "1",
    explained: float = 0.85,
    quantile: float = 0.99,
    smoothing_span: int = 5,
) -> tuple[Path, Path]:
    """The PCA T2+Q recipe (kept for the demo and existing callers)."""
    recipe = Recipe(
        kind="pca", explained=explained, pca_quantile=quantile, span=smoothing_span, lags=0
    )
    return build(recipe, x, signals, out_dir, model_id=model_id, version=version)
