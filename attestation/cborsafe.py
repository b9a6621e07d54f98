"""``cbor2.loads`` for bytes from outside, without cbor2 5.x's leak on invalid UTF-8.

cbor2 5.9's C decoder leaks ~600 bytes each time a text string is not valid UTF-8 and the
decode fails (agronholm/cbor2#257, open; found here by fuzz/targets.py ``upload``): a peer
could grow the hub's memory one hostile request at a time. cbor2 6 fixes it, but the COSE
interop tests' python-cwt pins cbor2 < 6. So text is decoded with ``surrogateescape`` (the
C decoder then finishes normally and frees what it built) and any string that carries an
escaped byte -- a lone surrogate, which valid UTF-8 can never produce -- is refused here,
with cbor2's own error and message.

One item and nothing else: cbor2 5.x ``loads`` stops after the first item and drops what
follows, so a byte appended to a signed micro-proof went unseen (issue 16). Bytes after the
item are refused here (``TrailingBytes``) for every caller.

The hub decodes every upload through here, so plain items (what uploads and micro-proofs
are made of) first go through ``decode_plain`` in the native extension
(``attestation/_native/leafcheck.c``): it builds what cbor2 builds, validating UTF-8 as it
goes, or answers None and cbor2 decides as before. Without the extension, or with
``FACTORYOPS_PURE_PYTHON=1``, only cbor2 runs.

Encoding goes the other way through ``dumps``: deterministic CBOR (RFC 8949 §4.2.1) as
cbor2 writes it with ``canonical=True``, except for the floats cbor2's C encoder widens
(``dumps`` says which); ``loads_checked`` holds bytes to exactly that.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from attestation.native import EXTENSION

__all__ = [
    "FAST",
    "TrailingBytes",
    "decode_plain",
    "dumps",
    "head",
    "loads",
    "loads_cbor2",
    "loads_checked",
]

# None without the extension (or with FACTORYOPS_PURE_PYTHON=1): cbor2 only
_decode_plain: Callable[[bytes, type], tuple[Any, bool] | None] | None = getattr(
    EXTENSION, "decode_plain", None
)

FAST = _decode_plain is not None
"""Whether plain items skip cbor2 (the native ``decode_plain``)."""

_PLAIN = frozenset({bytes, int, float, bool, type(None)})  # nothing to look into


class TrailingBytes(cbor2.CBORDecodeValueError):
    """Bytes after the one CBOR item: ``extra`` of them."""

    def __init__(self, extra: int) -> None:
        super().__init__(f"{extra} byte(s) after the CBOR item")
        self.extra = extra


class _Half:
    """A float ``dumps`` writes as a half itself (``_half_exact``)."""

    __slots__ = ("bits",)

    def __init__(self, value: float) -> None:
        self.bits = struct.pack(">e", value)


def _write_half(encoder: cbor2.CBOREncoder, value: object) -> None:
    if not isinstance(value, _Half):
        raise cbor2.CBOREncodeTypeError(f"cannot serialize type {type(value).__name__}")
    encoder.write(b"\xf9" + value.bits)


def _half_exact(x: float) -> bool:
    """A float of binary exponent 15 (32768.0 <= |x| <= 65504.0) that a half holds exactly:
    a multiple of 32 (a half keeps 11 significant bits)."""
    return 32768.0 <= abs(x) <= 65504.0 and math.fmod(x, 32.0) == 0.0


def _halves(obj: Any) -> Any:
    """``obj`` with each ``_half_exact`` float wrapped in a ``_Half``; the rest as it is. A
    float subclass (numpy's float64) is written as the float it is, so it cannot slip past
    to cbor2's widening.

    A tuple stays a tuple (cbor2 writes both as an array): a map key that cbor2 decoded as
    a tag over a tuple must stay hashable. Made a list, the tag's hash failed, and cbor2
    5.9's C ``CBORTag.__hash__`` then kept the failed tag in its per-thread set of tags
    being hashed: a later tag at the same address was refused as "contains a reference to
    itself", a ``RuntimeError`` far from the bytes that caused it (found by
    fuzz/targets.py ``microproof``)."""
    if isinstance(obj, float):
        x = float(obj)
        return _Half(x) if _half_exact(x) else x
    if isinstance(obj, dict):
        return {_halves(k): _halves(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_halves(v) for v in obj)
    if isinstance(obj, list):
        return [_halves(v) for v in obj]
    if isinstance(obj, cbor2.CBORTag):
        return cbor2.CBORTag(obj.tag, _halves(obj.value))
    return obj


def dumps(obj: Any) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1) of an item of numbers, strings, byte strings,
    lists, tuples, dicts and tags: what a micro-proof's payload, its protected header and a
    signed policy are written with, and what ``loads_checked`` holds signed bytes to.

    cbor2's canonical encoder, except for one kind of float: the C encoder writes a float
    of binary exponent 15 that a half holds exactly (32768.0 .. 65504.0 in steps of 32,
    such as 40000.0 or 60000.0) as a float32, where RFC 8949's shortest form, cbor2's own
    pure-Python encoder and other languages' deterministic encoders write the half
    (``f9 78e2`` for 40000.0). Those are written as halves here. Map keys are sorted as
    cbor2 sorts them (length first), which is §4.2.1's order for keys of one type."""
    return cbor2.dumps(_halves(obj), canonical=True, default=_write_half)


def head(major: int, n: int) -> bytes:
    """The initial byte(s) of a CBOR item of major type ``major`` with argument ``n``, in the
    shortest form deterministic CBOR requires (RFC 8949 §4.2.1): for encoders of fixed
    shapes (a leaf, COSE's Sig_structure) that would pay cbor2's per-call set-up."""
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return bytes((mt | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((mt | 26,)) + n.to_bytes(4, "big")
    return bytes((mt | 27,)) + n.to_bytes(8, "big")


def loads(data: bytes) -> Any:
    """Decode exactly one CBOR item strictly: invalid UTF-8 in any text string and bytes
    after the item (``TrailingBytes``) are refused.

    Every refusal is a ``cbor2.CBORDecodeError`` (cbor2's own, or a ``CBORDecodeValueError``
    made here), so callers catch that one type. cbor2's semantic tags can raise other errors
    from the types they build, such as ``decimal.InvalidOperation`` for a decimal fraction
    (tag 4) whose parts are not numbers, or ``RuntimeError`` for a shared-reference tag that
    contains itself used as a map key (both found by fuzz/targets.py ``leafseq``); a caller
    that catches decode errors must not let those through as a crash.
    """
    if _decode_plain is not None and (plain := _decode_plain(data, cbor2.CBORTag)) is not None:
        return plain[0]
    return loads_cbor2(data)


def loads_checked(data: bytes) -> tuple[Any, bool]:
    """``loads``, and whether ``data`` is the item's deterministic encoding: exactly what
    ``dumps`` writes (RFC 8949 §4.2.1 for maps whose keys share a type; ADR 0013). The
    native decoder tells as it decodes (its rule is ``dumps``'s); cbor2's path encodes
    again and compares."""
    if _decode_plain is not None and (plain := _decode_plain(data, cbor2.CBORTag)) is not None:
        return plain
    obj = loads_cbor2(data)
    try:
        return obj, dumps(obj) == data
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError):
        return obj, False  # decodes to something cbor2 cannot write back: not its encoding


def decode_plain(data: bytes) -> tuple[Any, bool] | None:
    """The native fast path alone: ``(item, canonical)`` for a plain item, None for anything
    it leaves to cbor2 (and None without the extension). For tests and the fuzz target."""
    return None if _decode_plain is None else _decode_plain(data, cbor2.CBORTag)


def loads_cbor2(data: bytes) -> Any:
    """``loads`` on cbor2 alone: the reference the native fast path must agree with."""
    fp = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(fp, str_errors="surrogateescape").decode()
    except cbor2.CBORDecodeError:
        raise
    except (ValueError, TypeError, ArithmeticError, LookupError, RuntimeError) as err:
        raise cbor2.CBORDecodeValueError(f"{type(err).__name__}: {err}") from err
    try:
        clean = _clean(obj)
    except RecursionError:
        clean = False
    if not clean:
        raise cbor2.CBORDecodeValueError("error decoding unicode string")
    if fp.tell() != len(data):
        raise TrailingBytes(len(data) - fp.tell())
    return obj


def _clean(obj: Any) -> bool:  # noqa: PLR0912 - one branch per CBOR major type, read as a table
    kind = type(obj)
    if kind in _PLAIN:
        return True
    if kind is str:
        return obj.isascii() or _utf8(obj)
    children: Any
    if kind is dict or isinstance(obj, Mapping):
        children = (*obj.keys(), *obj.values())
    elif kind is list or kind is tuple or isinstance(obj, (set, frozenset)):
        children = obj
    elif isinstance(obj, cbor2.CBORTag):
        children = (obj.value,)
    else:
        return True  # numbers, datetimes and the like: built from no text
    if set(map(type, children)) <= _PLAIN:  # a row of numbers: nothing to look into
        return True
    # one call a container, not one a child (the hub parses every proof through here)
    for child in children:
        if type(child) in _PLAIN:
            continue
        if type(child) is str:
            if not (child.isascii() or _utf8(child)):
                return False
        elif type(child) is list and set(map(type, child)) <= _PLAIN:
            continue
        elif not _clean(child):
            return False
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # a lone surrogate (an escaped invalid byte) cannot be encoded
    except UnicodeEncodeError:
        return False
    return True
