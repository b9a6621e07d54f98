"""``cbor2.loads`` for bytes from outside, without cbor2 5.x's leak on invalid UTF-8.

cbor2 5.9's C decoder leaks ~600 bytes each time a text string is not valid UTF-8 and the
decode fails (agronholm/cbor2#257, open; found here by fuzz/targets.py ``upload``): a peer
could grow the hub's memory one hostile request at a time. cbor2 6 fixes it, but the COSE
interop tests' python-cwt pins cbor2 < 6. So text is decoded with ``surrogateescape`` (the
C decoder then finishes normally and frees what it built) and any string that carries an
escaped byte -- a lone surrogate, which valid UTF-8 can never produce -- is refused here,
with cbor2's own error and message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2

__all__ = ["loads"]

_PLAIN = frozenset({bytes, int, float, bool, type(None)})  # nothing to look into


def loads(data: bytes) -> Any:
    """Decode one CBOR item strictly; invalid UTF-8 in any text string is refused."""
    obj = cbor2.loads(data, str_errors="surrogateescape")  # type: ignore[arg-type]  # stub lags
    try:
        clean = _clean(obj)
    except RecursionError:
        clean = False
    if not clean:
        raise cbor2.CBORDecodeValueError("error decoding unicode string")
    return obj


def _clean(obj: Any) -> bool:
    kind = type(obj)
    if kind in _PLAIN:
        return True
    if kind is str:
        return obj.isascii() or _utf8(obj)
    if kind is list or kind is tuple or isinstance(obj, (set, frozenset)):
        return set(map(type, obj)) <= _PLAIN or all(map(_clean, obj))
    if isinstance(obj, Mapping):
        return all(map(_clean, obj.keys())) and all(map(_clean, obj.values()))
    if isinstance(obj, cbor2.CBORTag):
        return _clean(obj.value)
    return True  # numbers, datetimes and the like: built from no text


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # a lone surrogate (an escaped invalid byte) cannot be encoded
    except UnicodeEncodeError:
        return False
    return True
