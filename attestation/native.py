"""The optional native extension (``attestation/_native/leafcheck.c``, built at install).

One place decides whether it is used: it is None when no C compiler was there at install
(the build hook warns and goes on) or when ``FACTORYOPS_PURE_PYTHON=1`` asks for the
pure-Python paths (benchmarks and tests measure both). ``attestation.leafbatch`` checks
windows with it (ADR 0007, 0011), ``attestation.cborsafe`` decodes plain CBOR (ADR 0012),
``attestation.microproof`` writes a proof's statistics map (ADR 0049).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["EXTENSION"]


def _load() -> ModuleType | None:
    if os.environ.get("FACTORYOPS_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module("attestation._leafcheck")
    except ImportError:  # no compiler where it was installed: the pure-Python paths
        return None


EXTENSION = _load()
