"""Model manifests: what the agent checks before it loads a model, and the loaded model.

The manifest names the ONNX file's SHA-256, signal order, threshold and smoothing; a model
whose file does not hash to the manifest is refused (the previous one keeps running).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models_onnx.errors import ModelError
from models_onnx.scoring import stack_lags

__all__ = ["LoadedModel", "Manifest", "load_model", "sha256_file", "write_manifest"]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    id: str
    version: str
    kind: str  # "pca_t2_q" | "autoencoder" | "twin" | "ensemble"
    onnx_file: str  # relative to the manifest
    sha256: str
    signals: tuple[str, ...]  # order of the signals within each lag block of the input
    threshold: float = 1.0
    smoothing_span: int = 5  # EWMA span over consecutive rows
    quantized: bool = False
    training_rows: int = 0
    training_sha256: str = ""
    training_scores: tuple[float, ...] = ()  # a sample, for the drift test
    metrics: dict[str, Any] = field(default_factory=dict)
    # input schema: x = [x_t, x_{t-1}, ..., x_{t-lags}], column names in ``inputs``
    # (empty for manifests written before lags existed: then inputs == signals)
    lags: int = 0
    inputs: tuple[str, ...] = ()
    # per-signal training mean and standard deviation (the graph standardises with them;
    # the agent imputes a bad value with the mean, see agent/inference.py)
    scaling: dict[str, tuple[float, float]] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("score",)
    # set when the hub publishes the model to the fleet (TUF): micro-proofs carry both
    fleet_version: int | None = None
    job_id: int | None = None  # the hub job (M2N2 merge, RND1 study) that produced it

    @property
    def columns(self) -> tuple[str, ...]:
        return self.inputs or self.signals


def write_manifest(path: Path, m: Manifest) -> None:
    doc = asdict(m)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class LoadedModel:
    manifest: Manifest
    session: ort.InferenceSession
    path: Path

    def score(self, rows: NDArray[np.float32]) -> NDArray[np.float32]:
        """Score model inputs (``manifest.columns`` wide: lag blocks already stacked)."""
        out = self.session.run(["score"], {"x": rows.astype(np.float32, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)

    def score_rows(
        self, rows: NDArray[np.float64], history: NDArray[np.float64] | None = None
    ) -> NDArray[np.float32]:
        """Score consecutive rows of the signals; ``history`` holds earlier rows, oldest first."""
        stacked = stack_lags(np.asarray(rows, dtype=np.float64), self.manifest.lags, history)
        return self.score(stacked.astype(np.float32))


def load_model(manifest_path: Path) -> LoadedModel:
    """Check the manifest and the ONNX file's hash, then open an inference session."""
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
        doc["signals"] = tuple(doc["signals"])
        doc["training_scores"] = tuple(doc.get("training_scores", ()))
        for key in ("inputs", "outputs"):
            if key in doc:
                doc[key] = tuple(doc[key])
        doc["scaling"] = {k: (float(v[0]), float(v[1])) for k, v in doc.get("scaling", {}).items()}
        m = Manifest(**doc)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelError(
            f"{manifest_path}: not a model manifest ({err})",
            hint="rebuild it with `factoryops model build`",
        ) from err
    # resolved: an installed fleet model is a symlink to its version's directory
    onnx_path = manifest_path.resolve().parent / m.onnx_file
    try:
        got = sha256_file(onnx_path)
    except OSError as err:
        raise ModelError(f"{onnx_path}: cannot read the model file") from err
    if got != m.sha256:
        raise ModelError(
            f"{onnx_path} hashes to {got}, the manifest says {m.sha256}",
            hint="the model file was altered or replaced; rebuild or restore it",
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a gateway core is shared with acquisition
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    width = session.get_inputs()[0].shape[1]
    if isinstance(width, int) and width != len(m.columns):
        raise ModelError(
            f"{onnx_path} takes {width} input columns, the manifest names {len(m.columns)}",
            hint="the manifest does not belong to this model file; rebuild both",
        )
    return LoadedModel(m, session, onnx_path)
