"""Check a whole window of leaves at once and compute its Merkle root (the hub's hot path).

A window's leaves travel and are stored either as a list of byte strings or, since ADR 0008,
back to back in one byte string: a CBOR sequence (RFC 8742; each canonical leaf is one
self-delimiting CBOR item). ``window_root`` (a list) and ``sequence_root`` (a sequence) give
the same answer as decoding every leaf with ``decode_leaf``, checking its seq and hashing it,
but run in C when the native extension was built (``attestation/_native/leafcheck.c``,
~0.2 us a leaf instead of ~5 us; ADR 0007). The Python decoder stays the reference: it names
what is wrong with a rejected leaf, and it decides alone whenever the extension is missing or
``FACTORYOPS_PURE_PYTHON=1`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from types import ModuleType

from attestation import merkle
from attestation.errors import MalformedInput
from attestation.native import EXTENSION
from attestation.reading import LEAF_LIMITS, LeafLimits, Reading, decode_leaf, leaf_hash

__all__ = [
    "NATIVE",
    "check_leaf",
    "checked_leaves",
    "native_sequence_verdict",
    "native_verdict",
    "sequence_root",
    "sha_backend",
    "sha_backends",
    "split_leaves",
    "using_sha_backend",
    "window_root",
]

_native: ModuleType | None = EXTENSION  # None: the pure-Python path

NATIVE = _native is not None


def sha_backend() -> str | None:
    """The native tree's SHA-256 code: ``"avx512"`` (sixteen nodes at a time), ``"sha-ni"``
    (four at a time with the x86 SHA extensions; ADR 0011) or ``"openssl"``, whichever
    hashed fastest at import; None without the extension."""
    return None if _native is None else str(_native.backend())


def sha_backends() -> list[str]:
    """The backends this CPU runs ([] without the extension); ``sha_backend`` is the one
    that rooted a calibration tree fastest when the extension was imported."""
    return [] if _native is None else [str(name) for name in _native.backends()]


@contextmanager
def using_sha_backend(name: str) -> Iterator[None]:
    """Hash with ``name`` inside the block (tests and benchmarks measure both). Raises
    ``ValueError`` for a backend this machine lacks, ``RuntimeError`` without the extension."""
    if _native is None:
        raise RuntimeError("the native window check is not built")
    before = _native.use_backend(name)
    try:
        yield
    finally:
        _native.use_backend(before)


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
    verdict: bytes | int = _native.check_window(leaves, first_seq, *_limit_args(limits))
    return verdict


def native_sequence_verdict(
    blob: bytes, count: int, first_seq: int, limits: LeafLimits = LEAF_LIMITS
) -> bytes | int | None:
    """``native_verdict`` for ``count`` >= 1 leaves back to back in ``blob``: the root, the
    index of the first leaf it refuses (``count``: bytes follow the last leaf), or None."""
    if _native is None:
        return None
    verdict: bytes | int = _native.check_sequence(blob, count, first_seq, *_limit_args(limits))
    return verdict


def _limit_args(limits: LeafLimits) -> tuple[int, int, int, int]:
    """The limits as the C functions take them, after their other arguments."""
    return (
        limits.max_leaf_bytes,
        limits.max_signal_chars,
        limits.max_unit_chars,
        limits.max_quality,
    )


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


def sequence_root(
    blob: bytes,
    count: int,
    first_seq: int,
    limits: LeafLimits = LEAF_LIMITS,
    *,
    native: bool = True,
) -> bytes:
    """``window_root`` of ``count`` leaves sent back to back in ``blob`` (a CBOR sequence).

    Raises ``MalformedInput`` naming the first bad leaf (``leaves[i]``), or ``leaves`` when
    the blob holds fewer or more leaves than ``count``.
    """
    if not 0 <= first_seq < 2**63:
        raise MalformedInput("first_seq", f"{first_seq} outside 0..2^63-1")
    if count == 0:
        if blob:
            raise MalformedInput("leaves", f"{len(blob)} bytes of leaves for a window of none")
        return merkle.EMPTY_ROOT
    got = native_sequence_verdict(blob, count, first_seq, limits) if native else None
    if isinstance(got, bytes):
        return got
    # refused in C (the Python decoder names why) or no C: the reference decides
    return merkle.root([leaf_hash(leaf) for leaf in checked_leaves(blob, count, first_seq, limits)])


def checked_leaves(
    blob: bytes, count: int, first_seq: int, limits: LeafLimits = LEAF_LIMITS
) -> list[bytes]:
    """The ``count`` leaves of ``blob``, each split off and checked before the next one, so
    the fault named is the first one, as in C."""
    leaves: list[bytes] = []
    for i, leaf in enumerate(islice(_split(blob, limits), count)):  # never splits past count
        check_leaf(leaf, i, first_seq, limits)
        leaves.append(leaf)
    if len(leaves) < count:
        raise MalformedInput("leaves", f"{len(leaves)} leaves sent, the proof signs {count}")
    if extra := len(blob) - sum(map(len, leaves)):
        raise MalformedInput(
            "leaves", f"{extra} bytes follow the last of the {count} leaves signed"
        )
    return leaves


def split_leaves(blob: bytes, limits: LeafLimits = LEAF_LIMITS) -> list[bytes]:
    """A stored CBOR sequence of leaves as a list (delimited only: ``check_leaf`` decodes)."""
    return list(_split(blob, limits))


def _split(blob: bytes, limits: LeafLimits) -> Iterator[bytes]:
    """The items of ``blob`` one at a time, each delimited only; raises naming the first that
    is not a complete CBOR item within the leaf size limit."""
    pos = index = 0
    while pos < len(blob):
        end = _item_end(blob, pos, min(len(blob), pos + limits.max_leaf_bytes))
        if end is None:
            raise MalformedInput(
                f"leaves[{index}]",
                f"no complete CBOR item of at most {limits.max_leaf_bytes} bytes at byte {pos}"
                f" of {len(blob)}",
            )
        yield blob[pos:end]
        pos, index = end, index + 1


def _item_end(blob: bytes, pos: int, limit: int) -> int | None:
    """Where the CBOR item at ``blob[pos]`` ends, if it ends by ``limit`` (iterative: nesting
    costs no stack). Indefinite lengths and reserved heads are refused: no leaf has them."""
    pending = 1  # items still to read
    while pending:
        if pos >= limit:
            return None
        major, info = blob[pos] >> 5, blob[pos] & 31
        pos += 1
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            arg = int.from_bytes(blob[pos : pos + width], "big")
            pos += width
        else:
            return None
        if major in (2, 3):  # byte and text strings: their bytes follow
            pos += arg
        if major == 4:
            pending += arg - 1
        elif major == 5:
            pending += 2 * arg - 1
        elif major != 6:  # a tag is followed by its item; everything else is one item
            pending -= 1
        if pos > limit or pending > limit - pos:  # every pending item needs a byte
            return None
    return pos
