"""Per-reading receipts: the JSON an auditor gets, and how to build one.

Keys: reading, leaf_index, path, microproof, log_receipt, checkpoint, certificates
(ARCHITECTURE.md, "Per-reading receipt"); bytes are standard base64 with padding. JSON has no
NaN or infinity, so a non-finite value is written as the string "NaN", "Infinity" or
"-Infinity"; a text value is a string and the reading then says ``"value_type": "text"``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attestation import merkle
from attestation.errors import MalformedInput
from attestation.reading import Reading, decode_leaf, encode_leaf, leaf_hash, reading_from_fields
from attestation.signednote import unb64

__all__ = [
    "MAX_RECEIPT_BYTES",
    "Receipt",
    "build_receipt",
    "reading_from_json",
    "reading_json",
    "receipt_from_json",
    "receipt_from_leaves",
]

MAX_RECEIPT_BYTES = 1 << 20  # a receipt is a few KiB; 1 MiB bounds what we parse
_MAX_PATH = 64  # a tree of 2^64 leaves has a 64-hash path
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TEXT = "text"


def reading_json(r: Reading) -> dict[str, Any]:
    """``r`` as the receipt's ``reading`` object: valid JSON for any value."""
    out = r.as_dict()
    v = r.value
    if isinstance(v, str):
        out["value_type"] = _TEXT
    elif not math.isfinite(v):
        out["value"] = "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"
    return out


def reading_from_json(doc: dict[str, Any], where: str = "reading") -> Reading:
    """The inverse of ``reading_json``, naming the first bad field."""
    value_type = doc.get("value_type")
    value = doc.get("value")
    if value_type is not None and value_type != _TEXT:
        raise MalformedInput(f"{where}.value_type", f'{value_type!r}; only "text" is defined')
    if value_type == _TEXT:
        if not isinstance(value, str):
            raise MalformedInput(f"{where}.value", 'value_type "text" needs a string value')
        return reading_from_fields(doc, where=where, text=True)
    if isinstance(value, str):
        if value not in _NON_FINITE:
            raise MalformedInput(
                f"{where}.value",
                f'{value!r}: a number, "NaN", "Infinity" or "-Infinity"'
                ' (text values say "value_type": "text")',
            )
        doc = {**doc, "value": _NON_FINITE[value]}
    return reading_from_fields(doc, where=where)


@dataclass(frozen=True, slots=True)
class Receipt:
    reading: Reading
    leaf_index: int
    path: tuple[bytes, ...]
    microproof: bytes
    log_receipt: bytes | None = None
    checkpoint: str | None = None
    certificates: tuple[bytes, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reading": reading_json(self.reading),
            "leaf_index": self.leaf_index,
            "path": [_b64(h) for h in self.path],
            "microproof": _b64(self.microproof),
        }
        if self.log_receipt is not None:
            out["log_receipt"] = _b64(self.log_receipt)
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.certificates:
            out["certificates"] = [_b64(c) for c in self.certificates]
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"


def build_receipt(
    window_readings: Sequence[Reading],
    index: int,
    microproof: bytes,
    *,
    leaf_hashes: Sequence[bytes] | None = None,
    certificates: Sequence[bytes] = (),
) -> Receipt:
    """Receipt for ``window_readings[index]`` from the window it was signed in."""
    hashes = leaf_hashes or [leaf_hash(encode_leaf(r)) for r in window_readings]
    return Receipt(
        reading=window_readings[index],
        leaf_index=index,
        path=tuple(merkle.inclusion_path(hashes, index)),
        microproof=microproof,
        certificates=tuple(certificates),
    )


def receipt_from_leaves(
    leaves: Sequence[bytes], index: int, microproof: bytes, *, certificates: Sequence[bytes] = ()
) -> Receipt:
    """Receipt for leaf ``index`` from the window's leaves as signed (how the hub stores them).

    Raises ``MalformedInput`` when that leaf does not decode (a damaged store).
    """
    return Receipt(
        reading=decode_leaf(leaves[index]),
        leaf_index=index,
        path=tuple(merkle.inclusion_path([leaf_hash(x) for x in leaves], index)),
        microproof=microproof,
        certificates=tuple(certificates),
    )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def receipt_from_json(doc: Any) -> Receipt:
    """Parse a receipt object (already JSON-decoded), naming the first bad field."""
    if isinstance(doc, str | bytes):
        if len(doc) > MAX_RECEIPT_BYTES:
            raise MalformedInput("receipt", f"{len(doc)} bytes, limit {MAX_RECEIPT_BYTES}")
        try:
            doc = json.loads(doc)
        except ValueError as err:
            raise MalformedInput("receipt", f"not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise MalformedInput("receipt", "expected a JSON object")
    for key in ("reading", "leaf_index", "path", "microproof"):
        if key not in doc:
            raise MalformedInput(key, "missing")
    if not isinstance(doc["reading"], dict):
        raise MalformedInput("reading", "expected an object")
    reading = reading_from_json(doc["reading"])
    leaf_index = doc["leaf_index"]
    if isinstance(leaf_index, bool) or not isinstance(leaf_index, int) or leaf_index < 0:
        raise MalformedInput("leaf_index", "expected a non-negative integer")
    raw_path = doc["path"]
    if not isinstance(raw_path, list) or len(raw_path) > _MAX_PATH:
        raise MalformedInput("path", f"expected a list of at most {_MAX_PATH} hashes")
    path = tuple(unb64(h, f"path[{i}]") for i, h in enumerate(raw_path))
    log_receipt = doc.get("log_receipt")
    checkpoint = doc.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise MalformedInput("checkpoint", "expected the signed note's text")
    certs = doc.get("certificates") or []
    if not isinstance(certs, list) or len(certs) > 8:
        raise MalformedInput("certificates", "expected a list of at most 8 certificates")
    return Receipt(
        reading=reading,
        leaf_index=leaf_index,
        path=path,
        microproof=unb64(doc["microproof"], "microproof"),
        log_receipt=None if log_receipt is None else unb64(log_receipt, "log_receipt"),
        checkpoint=checkpoint,
        certificates=tuple(unb64(c, f"certificates[{i}]") for i, c in enumerate(certs)),
    )
