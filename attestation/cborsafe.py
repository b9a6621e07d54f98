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
    """Decode one CBOR item strictly; invalid UTF-8 in any text string is refused.

    Every refusal is a ``cbor2.CBORDecodeError`` (cbor2's own, or a ``CBORDecodeValueError``
    made here), so callers catch that one type. cbor2's semantic tags can raise other errors
    from the types they build, such as ``decimal.InvalidOperation`` for a decimal fraction
    (tag 4) whose parts are not numbers, or ``RuntimeError`` for a shared-reference tag that
    contains itself used as a map key (both found by fuzz/targets.py ``leafseq``); a caller
    that catches decode errors must not let those through as a crash.
    """
    try:
        obj = cbor2.loads(data, str_errors="surrogateescape")  # type: ignore[arg-type]  # stub lags
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
    return obj


def _clean(obj: Any) -> bool:
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
