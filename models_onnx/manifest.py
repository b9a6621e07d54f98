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

__all__ = ["LoadedModel", "Manifest", "load_model", "sha256_file", "write_manifest"]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    id: str
    version: str
    kind: str  # "pca_t2_q"
    onnx_file: str  # relative to the manifest
    sha256: str
    signals: tuple[str, ...]
    threshold: float = 1.0
    smoothing_span: int = 5  # EWMA span over consecutive rows
    quantized: bool = False
    training_rows: int = 0
    training_sha256: str = ""
    training_scores: tuple[float, ...] = ()  # a sample, for the drift test
    metrics: dict[str, Any] = field(default_factory=dict)


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
        out = self.session.run(["score"], {"x": rows.astype(np.float32, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)


def load_model(manifest_path: Path) -> LoadedModel:
    """Check the manifest and the ONNX file's hash, then open an inference session."""
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
        doc["signals"] = tuple(doc["signals"])
        doc["training_scores"] = tuple(doc.get("training_scores", ()))
        m = Manifest(**doc)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelError(
            f"{manifest_path}: not a model manifest ({err})",
            hint="rebuild it with `factoryops model build`",
        ) from err
    onnx_path = manifest_path.parent / m.onnx_file
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
    return LoadedModel(m, session, onnx_path)
