"""Check a whole window of leaves at once and compute its Merkle root (the hub's hot path).

``window_root`` gives the same answer as decoding every leaf with ``decode_leaf``, checking
its seq and hashing it, but runs in C when the native extension was built
(``attestation/_native/leafcheck.c``, ~0.1 us a leaf instead of ~5 us; ADR 0007). The Python
decoder stays the reference: it names what is wrong with a rejected leaf, and it decides
alone whenever the extension is missing or ``FACTORYOPS_PURE_PYTHON=1`` is set.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from types import ModuleType

from attestation import merkle
from attestation.errors import MalformedInput
from attestation.reading import LEAF_LIMITS, LeafLimits, Reading, decode_leaf, leaf_hash

__all__ = ["NATIVE", "check_leaf", "native_verdict", "window_root"]

_native: ModuleType | None
try:
    _native = importlib.import_module("attestation._leafcheck")
except ImportError:  # no compiler where it was installed: the pure-Python path
    _native = None
if os.environ.get("FACTORYOPS_PURE_PYTHON") == "1":  # benchmarks measure both paths
    _native = None

NATIVE = _native is not None


def check_leaf(
    leaf: bytes, index: int, first_seq: int, limits: LeafLimits = LEAF_LIMITS
) -> Reading:
    """Leaf ``index`` of a window that starts at ``first_seq``, strictly decoded."""
    try:
        reading = decode_leaf(leaf, limits)
    except MalformedInput as err:
        raise MalformedInput(f"leaves[{index}]", str(err)) from err
    if reading.seq != first_seq + index:
        raise MalformedInput(f"leaves[{index}]", f"seq {reading.seq}, expected {first_seq + index}")
    return reading


def native_verdict(
    leaves: Sequence[bytes], first_seq: int, limits: LeafLimits = LEAF_LIMITS
) -> bytes | int | None:
    """The C check alone: the root, the index of the first leaf it refuses, or None when the
    extension is not built (or ``FACTORYOPS_PURE_PYTHON=1``)."""
    if _native is None:
        return None
    verdict: bytes | int = _native.check_window(
        leaves,
        first_seq,
        limits.max_leaf_bytes,
        limits.max_signal_chars,
        limits.max_unit_chars,
        limits.max_quality,
    )
    return verdict


def window_root(
    leaves: Sequence[bytes],
    first_seq: int,
    limits: LeafLimits = LEAF_LIMITS,
    *,
    native: bool = True,
) -> bytes:
    """RFC 9162 root of ``leaves`` once each is a canonical leaf with seq ``first_seq + i``.

    Raises ``MalformedInput`` naming the first bad leaf (``leaves[i]``) and why.
    """
    if not 0 <= first_seq < 2**63:
        raise MalformedInput("first_seq", f"{first_seq} outside 0..2^63-1")
    if not leaves:
        return merkle.EMPTY_ROOT
    got = native_verdict(leaves, first_seq, limits) if native else None
    if isinstance(got, bytes):
        return got
    if got is not None:
        check_leaf(leaves[got], got, first_seq, limits)  # raises, naming the fault
        # unreachable while the two agree (tests prove they do); if they ever did not,
        # the Python decoder is the reference: fall through and let it decide
    for i, leaf in enumerate(leaves):
        check_leaf(leaf, i, first_seq, limits)
    return merkle.root([leaf_hash(leaf) for leaf in leaves])
