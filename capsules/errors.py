"""Errors of the capsule catalogue: one root with a ``hint``, and a refusal that names key and line.

``CapsuleInvalid`` is bad outside input (a capsule file); ``UnknownCapsule`` a name the
catalogue does not hold; ``BundleInvalid`` a published artefact whose signature or digest fails.
"""

from __future__ import annotations

from attestation.errors import Fixable

__all__ = ["BundleInvalid", "CapsuleError", "CapsuleInvalid", "UnknownCapsule"]


class CapsuleError(Fixable):
    """Root of every error raised by ``capsules``."""


class CapsuleInvalid(CapsuleError):
    """A capsule refused: ``key`` is the dotted path (``connector[0].signals[2].unit``)."""

    def __init__(self, path: str, key: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(
            f"{where}: {key}: {message}",
            hint="fix the key, then run `factoryops capsule validate PATH` (docs/capsules.md)",
        )
        self.path = path
        self.key = key
        self.line = line
        self.detail = message


class UnknownCapsule(CapsuleError):
    """A capsule name that is not in the catalogue."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"no capsule named {name!r}",
            hint=f"`factoryops capsule list` shows them: {', '.join(known[:6])}, ...",
        )


class BundleInvalid(CapsuleError):
    """A published capsule bundle whose digest or signature does not verify."""
