"""models_onnx: anomaly model recipes (numpy -> ONNX -> int8), manifests and SKAB evaluation."""

from models_onnx.errors import ModelError
from models_onnx.manifest import LoadedModel, Manifest, load_model

__all__ = ["LoadedModel", "Manifest", "ModelError", "load_model"]
