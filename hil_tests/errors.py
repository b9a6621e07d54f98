"""Errors of the HIL rigs and the plant simulator: one root with a ``hint``."""

from __future__ import annotations

__all__ = ["HilError"]


class HilError(Exception):
    """Root of every error raised by ``hil_tests``; carries a fix-it ``hint``."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint
