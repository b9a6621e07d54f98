"""Errors of the proof core: one root, parse errors apart from broken links.

A malformed input (``MalformedInput``) and a forged one (``BrokenLink``) are
different answers: the first says which field could not be read, the second which
link of the chain of evidence does not hold.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "BrokenLink",
    "Fixable",
    "KeyFileError",
    "MalformedInput",
    "Noncanonical",
    "UnsupportedAlgorithm",
]


class Fixable(Exception):
    """Base of every package's root error: a message plus a ``hint`` saying how to fix it.

    The CLI catches ``Fixable`` once, prints message and hint, and exits non-zero.
    """

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class AttestationError(Fixable):
    """Root of every error raised by ``attestation``."""


class MalformedInput(AttestationError):
    """Bytes or JSON that cannot be parsed; ``field`` names where parsing stopped."""

    def __init__(self, field: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"{field}: {message}", hint=hint)
        self.field = field


class Noncanonical(MalformedInput):
    """Bytes that parse, but are not the one encoding the format allows (ARCHITECTURE.md,
    "One canonical form"): deterministic CBOR all through, tagged, an empty unprotected
    header, nothing after the item, a low s. ``code`` is the refusal scripts match on."""

    code = "noncanonical"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            field,
            f"not in canonical form: {message}",
            hint="a proof has exactly one encoding: send the bytes the device signed, unaltered",
        )


class UnsupportedAlgorithm(AttestationError):
    """A COSE algorithm we do not implement (we refuse it, we never guess)."""


class KeyFileError(AttestationError):
    """A key file that is missing, unreadable, or readable by others."""


class BrokenLink(AttestationError):
    """A link in the chain of evidence that does not hold.

    ``link`` is a stable identifier that scripts may match on, one of
    ``reading``, ``inclusion``, ``root``, ``signature``, ``key``, ``chain``,
    ``certificate``, ``log``, ``checkpoint``, ``consistency``.
    """

    def __init__(self, link: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"{link}: {message}", hint=hint)
        self.link = link
