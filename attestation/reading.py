"""One sensor reading and its leaf codec: deterministic CBOR (RFC 8949 §4.2.1).

The leaf is the map ``{1: seq, 2: ts_ns, 3: signal, 4: value, 5: unit, 6: quality}``; the
value is a CBOR float, or a CBOR text string for a source value that is not a number (an
OPC UA String, a DateTime as RFC 3339 UTC). ``encode_leaf`` is a hand encoder for the hot
path, proven byte-equal to cbor2's pure-Python canonical encoder by property tests (its C
encoder widens some floats: ``cborsafe.dumps``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import cbor2

from attestation import cborsafe
from attestation.cborsafe import head as _head
from attestation.errors import MalformedInput
from attestation.native import EXTENSION

__all__ = [
    "LEAF_LIMITS",
    "LeafLimits",
    "Reading",
    "decode_leaf",
    "encode_leaf",
    "encode_leaves",
    "leaf_hash",
    "new_reading",
    "reading_from_fields",
]


@dataclass(frozen=True, slots=True)
class LeafLimits:
    """Bounds a leaf decoder enforces on input from outside."""

    max_leaf_bytes: int = 1024  # a leaf is ~40-80 bytes; 1 KiB leaves room for long names
    max_signal_chars: int = 128  # tag names in PLC programs rarely pass 64 characters
    max_unit_chars: int = 32
    max_quality: int = 0xFFFFFFFF  # OPC UA StatusCode is a UInt32


LEAF_LIMITS = LeafLimits()


@dataclass(frozen=True, slots=True)
class Reading:
    """A value read from a plant signal. ``quality`` is an OPC UA StatusCode (0 = Good).

    ``value`` is a float, or text for a source value that is not a number."""

    seq: int
    ts_ns: int
    signal: str
    value: float | str
    unit: str
    quality: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts_ns": self.ts_ns,
            "signal": self.signal,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality,
        }


_FIELDS = ("seq", "ts_ns", "signal", "value", "unit", "quality")
if tuple(f.name for f in fields(Reading)) != _FIELDS:  # new_reading sets exactly these
    raise RuntimeError(f"Reading's fields changed: update new_reading ({fields(Reading)})")
_new = object.__new__
_set_seq, _set_ts, _set_signal, _set_value, _set_unit, _set_quality = (
    getattr(Reading, name).__set__ for name in _FIELDS
)


def new_reading(
    seq: int, ts_ns: int, signal: str, value: float | str, unit: str, quality: int
) -> Reading:
    """``Reading(seq, ts_ns, signal, value, unit, quality)``, built ~2x faster: each slot is
    set through its descriptor instead of the frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` call a field). For the window builder, which makes one a sample;
    the object is the same in every respect (fields, equality, hash, immutability)."""
    r = _new(Reading)
    _set_seq(r, seq)
    _set_ts(r, ts_ns)
    _set_signal(r, signal)
    _set_value(r, value)
    _set_unit(r, unit)
    _set_quality(r, quality)
    return r


def _int(n: int) -> bytes:
    return _head(0, n) if n >= 0 else _head(1, -1 - n)


def _text(s: str) -> bytes:
    b = s.encode("utf-8")
    return _head(3, len(b)) + b


_NAN = b"\xf9\x7e\x00"
_pack_e = struct.Struct(">e").pack
_pack_f = struct.Struct(">f").pack
_unpack_e = struct.Struct(">e").unpack
_unpack_f = struct.Struct(">f").unpack


_pack_d = struct.Struct(">d").pack


def _float(x: float) -> bytes:
    """Shortest IEEE 754 form that keeps the value exactly (RFC 8949 §4.2.2)."""
    # Sensor values rarely fit a float32 exactly, so test that first: one pack for most.
    try:
        single = _pack_f(x)
    except OverflowError:
        return b"\xfb" + _pack_d(x)
    if _unpack_f(single)[0] != x:
        return _NAN if x != x else b"\xfb" + _pack_d(x)  # noqa: PLR0124 - NaN test
    try:
        half = _pack_e(x)
        if _unpack_e(half)[0] == x:
            return b"\xf9" + half
    except OverflowError:
        pass
    return b"\xfa" + single


_TEXT_CACHE: dict[str, bytes] = {}
_TEXT_CACHE_MAX = 4096  # signal names and units repeat; bound the memo all the same


def _text_cached(s: str) -> bytes:
    b = _TEXT_CACHE.get(s)
    if b is None:
        b = _text(s)
        if len(_TEXT_CACHE) < _TEXT_CACHE_MAX:
            _TEXT_CACHE[s] = b
    return b


# Hot-path heads: map header, key 1 + seq, key 2 + ts_ns (a uint64), key 3 — packed at once
# for the two seq sizes a running device spends nearly all its life in.
_HEAD_SEQ16 = struct.Struct(">HBHHQB")  # a6 01 19 <seq u16> 02 1b <ts u64> 03
_HEAD_SEQ32 = struct.Struct(">HBIHQB")  # a6 01 1a <seq u32> 02 1b <ts u64> 03


def encode_leaf(r: Reading) -> bytes:
    """Deterministic CBOR bytes of ``r``; a number is always a CBOR float, text a text string."""
    seq, ts, v = r.seq, r.ts_ns, r.value
    if type(v) is str:
        value = b"\x04" + _text(v)
    else:
        value = _leaf_float(v if type(v) is float else float(v))
    signal = _TEXT_CACHE.get(r.signal) or _text_cached(r.signal)
    unit = _TEXT_CACHE.get(r.unit) or _text_cached(r.unit)
    quality = b"\x06\x00" if r.quality == 0 else b"\x06" + _int(r.quality)
    if 0x100000000 <= ts < 0x10000000000000000:
        if 0x10000 <= seq < 0x100000000:
            head = _HEAD_SEQ32.pack(0xA601, 0x1A, seq, 0x021B, ts, 0x03)
            return b"".join((head, signal, value, b"\x05", unit, quality))
        if 0x100 <= seq < 0x10000:
            head = _HEAD_SEQ16.pack(0xA601, 0x19, seq, 0x021B, ts, 0x03)
            return b"".join((head, signal, value, b"\x05", unit, quality))
    head = b"".join((b"\xa6\x01", _int(seq), b"\x02", _int(ts), b"\x03"))
    return b"".join((head, signal, value, b"\x05", unit, quality))


def _leaf_float(v: float) -> bytes:
    """Key 4 and ``v`` as a CBOR float: float64 unless float32 keeps it exactly, then float16
    if that does too (``_float``'s rule, one float32 round trip for every value)."""
    try:
        single = _pack_f(v)
    except OverflowError:  # past float32's range: only float64 holds it
        return b"\x04\xfb" + _pack_d(v)
    if _unpack_f(single)[0] != v:
        return b"\x04\xf9\x7e\x00" if v != v else b"\x04\xfb" + _pack_d(v)  # noqa: PLR0124 - NaN test
    try:
        half = _pack_e(v)
    except OverflowError:
        return b"\x04\xfa" + single
    return b"\x04\xf9" + half if _unpack_e(half)[0] == v else b"\x04\xfa" + single


def encode_leaves(readings: Sequence[Reading]) -> tuple[bytes, ...]:
    """``tuple(map(encode_leaf, readings))``: a window's leaves, by the native extension
    where it is built (~0.13 against ~0.6 us a leaf; ADR 0049), which hands any reading it
    does not take to ``encode_leaf``. A property test holds the two to the same bytes."""
    if EXTENSION is None:
        return tuple(map(encode_leaf, readings))
    leaves: tuple[bytes, ...] = EXTENSION.encode_leaves(readings, encode_leaf)
    return leaves


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def decode_leaf(data: bytes, limits: LeafLimits = LEAF_LIMITS) -> Reading:
    """Parse leaf bytes strictly: they must re-encode to exactly the same bytes."""
    if len(data) > limits.max_leaf_bytes:
        raise MalformedInput("leaf", f"{len(data)} bytes, limit {limits.max_leaf_bytes}")
    try:
        obj = cborsafe.loads(data)
    except cbor2.CBORDecodeError as err:
        raise MalformedInput("leaf", f"not CBOR: {err}") from err
    if not isinstance(obj, dict) or set(obj) != {1, 2, 3, 4, 5, 6}:
        raise MalformedInput("leaf", "expected a map with keys 1..6")
    reading = _fast_fields(obj, limits) or reading_from_fields(
        {
            "seq": obj[1],
            "ts_ns": obj[2],
            "signal": obj[3],
            "value": obj[4],
            "unit": obj[5],
            "quality": obj[6],
        },
        where="leaf",
        limits=limits,
        text=True,
    )
    if encode_leaf(reading) != data:
        raise MalformedInput("leaf", "not in deterministic CBOR form")
    return reading


def _fast_fields(obj: dict[int, Any], limits: LeafLimits) -> Reading | None:
    """The common case of ``reading_from_fields`` in one expression; None: take the slow path.

    Accepts exactly what the slow path accepts (exact types, not subclasses such as bool),
    so the slow path only runs to name what is wrong. A float value only (a text value
    takes the slow path): a canonical leaf encodes a number as a CBOR float.
    """
    s, t, sig, v, u, q = obj[1], obj[2], obj[3], obj[4], obj[5], obj[6]
    if (
        type(s) is int
        and type(t) is int
        and type(sig) is str
        and type(v) is float
        and type(u) is str
        and type(q) is int
        and 0 <= s < 2**63
        and -(2**63) <= t < 2**63
        and 0 < len(sig) <= limits.max_signal_chars
        and len(u) <= limits.max_unit_chars
        and 0 <= q <= limits.max_quality
    ):
        return Reading(s, t, sig, v, u, q)
    return None


def reading_from_fields(
    fields: dict[str, Any], *, where: str, limits: LeafLimits = LEAF_LIMITS, text: bool = False
) -> Reading:
    """Build a ``Reading`` from untrusted named fields, naming the first bad one; ``text``:
    the value may be text (a leaf says so by its CBOR type; a caller whose format does not,
    such as JSON, decides from its own marker)."""

    def need(name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in fields:
            raise MalformedInput(f"{where}.{name}", "missing")
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise MalformedInput(f"{where}.{name}", f"expected {_kind_name(kind)}")
        return value

    seq = need("seq", int)
    ts_ns = need("ts_ns", int)
    signal = need("signal", str)
    value = need("value", (float, int, str) if text else (float, int))
    unit = need("unit", str)
    quality = need("quality", int)
    if not 0 <= seq < 2**63:
        raise MalformedInput(f"{where}.seq", f"{seq} outside 0..2^63-1")
    if not -(2**63) <= ts_ns < 2**63:
        raise MalformedInput(f"{where}.ts_ns", f"{ts_ns} outside the int64 range")
    if not 0 < len(signal) <= limits.max_signal_chars:
        raise MalformedInput(f"{where}.signal", f"length must be 1..{limits.max_signal_chars}")
    if len(unit) > limits.max_unit_chars:
        raise MalformedInput(f"{where}.unit", f"length must be at most {limits.max_unit_chars}")
    if not 0 <= quality <= limits.max_quality:
        raise MalformedInput(f"{where}.quality", f"{quality} outside 0..{limits.max_quality}")
    return Reading(seq, ts_ns, signal, value if type(value) is str else float(value), unit, quality)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__
