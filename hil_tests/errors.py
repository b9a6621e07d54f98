"""Errors of the HIL rigs and the plant simulator: one root with a ``hint``."""

from __future__ import annotations

from attestation.errors import Fixable

__all__ = ["HilError"]


class HilError(Fixable):
    """Root of every error raised by ``hil_tests``."""
