"""Errors of the model recipes and loaders: one root with a ``hint``."""

from __future__ import annotations

from attestation.errors import Fixable

__all__ = ["ModelError"]


class ModelError(Fixable):
    """Root of every error raised by ``models_onnx``."""
