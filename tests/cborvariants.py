"""Every encoding CBOR allows for one value: a Hypothesis strategy for malleability tests.

RFC 8949 lets an encoder write the same data many ways: an integer or a length with a wider
head than it needs (§3.1), a string, array or map of indefinite length (§3.2), map keys in
any order, a float wider than the value needs (§3.3). ``encode_variant(value)`` draws one
of them and says whether the draw was the one deterministic encoding (every choice the
shortest, every map sorted as ``cbor2.dumps(canonical=True)`` sorts it: §4.2.1 for keys of
one type), so a test knows which bytes a strict decoder must refuse.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from typing import Any

import cbor2
from hypothesis import strategies as st

from attestation.cose import to_be_signed

__all__ = ["Encoded", "encode_variant", "head", "widened"]

_WIDTHS = ((24, 1, 0x100), (25, 2, 0x10000), (26, 4, 0x100000000), (27, 8, 1 << 64))


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    canonical: bool  # every choice was the deterministic one


def _forms(major: int, n: int) -> list[bytes]:
    """Every head of major type ``major`` for argument ``n``, the shortest first."""
    forms = [bytes((major << 5 | n,))] if n < 24 else []
    for ai, size, limit in _WIDTHS:
        if n < limit:
            forms.append(bytes((major << 5 | ai,)) + n.to_bytes(size, "big"))
    return forms


def head(major: int, n: int, extra: int = 0) -> bytes:
    """The head of major type ``major`` for argument ``n``, ``extra`` widths wider than the
    shortest (0: the shortest form)."""
    forms = _forms(major, n)
    return forms[min(extra, len(forms) - 1)]


def _head(draw: st.DrawFn, major: int, n: int) -> Encoded:
    forms = _forms(major, n)
    extra = draw(st.integers(0, len(forms) - 1))
    return Encoded(forms[extra], extra == 0)


def _float(draw: st.DrawFn, x: float) -> Encoded:
    forms: list[bytes] = []
    if math.isnan(x):
        forms = [b"\xf9\x7e\x00", b"\xfa\x7f\xc0\x00\x00", b"\xfb\x7f\xf8" + bytes(6)]
    else:
        for ib, fmt in ((0xF9, ">e"), (0xFA, ">f"), (0xFB, ">d")):
            try:
                packed = struct.pack(fmt, x)
            except OverflowError:
                continue
            if struct.unpack(fmt, packed)[0] == x:
                forms.append(bytes((ib,)) + packed)
    i = draw(st.integers(0, len(forms) - 1))
    return Encoded(forms[i], i == 0)


def _string(draw: st.DrawFn, major: int, value: bytes | str) -> Encoded:
    raw = value if isinstance(value, bytes) else value.encode()
    if value and draw(st.booleans()) and draw(st.booleans()):  # indefinite: chunks, then break
        # a text chunk is text on its own (§3.2.3): cut between characters, not inside one
        cut = sorted(draw(st.lists(st.integers(0, len(value)), max_size=2)))
        edges = [0, *cut, len(value)]
        chunks = [value[a:b] for a, b in itertools.pairwise(edges)]
        encoded = [c if isinstance(c, bytes) else c.encode() for c in chunks]
        body = b"".join(head(major, len(c)) + c for c in encoded)
        return Encoded(bytes((major << 5 | 31,)) + body + b"\xff", False)
    h = _head(draw, major, len(raw))
    return Encoded(h.data + raw, h.canonical)


def _container(draw: st.DrawFn, major: int, items: list[Encoded], count: int) -> Encoded:
    body = b"".join(i.data for i in items)
    ok = all(i.canonical for i in items)
    if draw(st.integers(0, 5)) == 0:  # indefinite length
        return Encoded(bytes((major << 5 | 31,)) + body + b"\xff", False)
    h = _head(draw, major, count)
    return Encoded(h.data + body, ok and h.canonical)


@st.composite
def encode_variant(draw: st.DrawFn, value: Any) -> Encoded:
    """One encoding of ``value`` (as cbor2 decodes it: int, bytes, str, list, dict, float,
    bool, None, CBORTag), and whether it is the deterministic one."""
    if value is None or isinstance(value, bool):
        return Encoded(cbor2.dumps(value), True)
    if isinstance(value, int):
        if not -(2**64) <= value < 2**64:  # a bignum (tag 2 or 3): one encoding here
            return Encoded(cbor2.dumps(value, canonical=True), True)
        return _head(draw, 0, value) if value >= 0 else _head(draw, 1, -1 - value)
    if isinstance(value, float):
        return _float(draw, value)
    if isinstance(value, bytes):
        return _string(draw, 2, value)
    if isinstance(value, str):
        return _string(draw, 3, value)
    if isinstance(value, list):
        items = [draw(encode_variant(v)) for v in value]
        return _container(draw, 4, items, len(value))
    if isinstance(value, dict):
        keys = list(value)
        encoded = {k: cbor2.dumps(k, canonical=True) for k in keys}
        canonical_order = sorted(keys, key=lambda k: (len(encoded[k]), encoded[k]))
        order = draw(st.permutations(keys))
        pairs = [draw(encode_variant(k)) for k in order]
        values = [draw(encode_variant(value[k])) for k in order]
        items = [x for pair in zip(pairs, values, strict=True) for x in pair]
        got = _container(draw, 5, items, len(keys))
        return Encoded(got.data, got.canonical and order == canonical_order)
    if isinstance(value, cbor2.CBORTag):
        h = _head(draw, 6, value.tag)
        inner = draw(encode_variant(value.value))
        return Encoded(h.data + inner.data, h.canonical and inner.canonical)
    raise TypeError(f"no variants for {type(value).__name__}")


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""The order of the P-256 group (SEC 2 §2.4.2): (r, s) and (r, n - s) both verify."""


def twin_signature(signature: bytes) -> bytes:
    """The other valid ES256 signature of the same message: (r, n - s)."""
    r, s = signature[:32], int.from_bytes(signature[32:], "big")
    return r + (P256_N - s).to_bytes(32, "big")


def high_s(signature: bytes) -> bool:
    return int.from_bytes(signature[32:], "big") > P256_N // 2


def altered_copies(cose: bytes) -> dict[str, bytes]:
    """The five copies of a signed micro-proof the hub accepted before it checked the
    canonical form (issue 16): each still carries a valid signature."""
    tag = cbor2.loads(cose)
    protected, _, payload, signature = tag.value

    def outer(unprotected: bytes = b"\xa0", protected_head: bytes | None = None) -> bytes:
        ph = head(2, len(protected)) if protected_head is None else protected_head
        return b"".join(
            (b"\xd2\x84", ph, protected, unprotected, cbor2.dumps(payload), cbor2.dumps(signature))
        )

    assert outer() == cose, "the genuine proof is not in canonical form to begin with"
    return {
        "trailing_byte": cose + b"\x00",
        "unprotected_header": outer(unprotected=cbor2.dumps({99: "not signed"})),
        "twin_signature": cbor2.dumps(
            cbor2.CBORTag(18, [protected, {}, payload, twin_signature(signature)])
        ),
        "protected_length_non_minimal": outer(protected_head=head(2, len(protected), 1)),
        "unprotected_length_non_minimal": outer(unprotected=b"\xb8\x00"),
    }


def widened(cose: bytes, sign: Any) -> bytes:
    """``cose`` as signers wrote it before cborsafe.dumps: its payload as cbor2's C encoder
    writes it (a float of 32768.0 .. 65504.0 that a half holds exactly, such as 40000.0,
    as a float32: not RFC 8949's shortest form), signed again with ``sign`` (low s)."""
    protected, _, payload, _ = cbor2.loads(cose).value
    wide = cbor2.dumps(cbor2.loads(payload), canonical=True)
    signature = sign(to_be_signed(protected, wide))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, wide, signature]), canonical=True)


@st.composite
def proof_variants(draw: st.DrawFn, cose: bytes, sign: Any) -> Encoded:
    """``cose`` (a canonical, signed micro-proof) written again in a drawn encoding: its
    protected header content and payload re-encoded (and signed again with ``sign``, so
    the signature holds), the outer array and its strings re-encoded, a low or a high s,
    an empty or a non-empty unprotected header, tagged or not, bytes after it or none."""
    protected, _, payload, _ = cbor2.loads(cose).value
    pe = draw(encode_variant(cbor2.loads(protected)))
    pl = draw(encode_variant(cbor2.loads(payload)))
    signature = sign(to_be_signed(pe.data, pl.data))
    low = twin_signature(signature) if high_s(signature) else signature
    want_high = draw(st.integers(0, 3)) == 0
    signature = twin_signature(low) if want_high else low
    extra_headers = draw(st.sampled_from([{}, {}, {}, {4: b"kid"}, {99: "x"}, {33: [b"cert"]}]))
    parts = [
        draw(encode_variant(pe.data)),
        draw(encode_variant(extra_headers)),
        draw(encode_variant(pl.data)),
        draw(encode_variant(signature)),
    ]
    array = _container(draw, 4, parts, 4)
    tagged = draw(st.integers(0, 4)) != 0
    tag = _head(draw, 6, 18) if tagged else Encoded(b"", False)
    trailing = draw(st.sampled_from([b"", b"", b"", b"\x00", b"\xf6", b"\xa0\xa0"]))
    canonical = (
        pe.canonical
        and pl.canonical
        and not want_high
        and not extra_headers
        and array.canonical
        and tag.canonical
        and not trailing
    )
    return Encoded(tag.data + array.data + trailing, canonical)
