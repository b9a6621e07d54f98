"""Errors of the HIL rigs and the plant simulator: one root with a ``hint``.

Bad outside input (a SKAB file, a rig file) and a rig whose expectations failed are
different answers, so each has its own subclass.
"""

from __future__ import annotations

from attestation.errors import Fixable

__all__ = ["HilError", "RigError", "RigFailed", "SkabFormatError"]


class HilError(Fixable):
    """Root of every error raised by ``hil_tests``."""


class SkabFormatError(HilError):
    """A SKAB-format CSV that cannot be read; the message names file and line."""


class RigError(HilError):
    """A rig or fault-schedule file that cannot be used; the message names file and key."""


class RigFailed(HilError):
    """A rig ran, and at least one of its expectations did not hold."""
