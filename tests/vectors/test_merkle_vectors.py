"""RFC 9162 conformance: every transparency-dev/merkle vector in ../shared/vectors/merkle."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from attestation import BrokenLink, merkle
from tests.conftest import SHARED, or_absent

_DIR = SHARED / "vectors" / "merkle"
_FILES = sorted(_DIR.rglob("*.json")) if _DIR.is_dir() else []


def _b(s: str | None) -> bytes:
    return base64.b64decode(s or "")


def _check(d: dict[str, Any]) -> None:
    if "leafIdx" in d:
        merkle.verify_inclusion(
            _b(d["leafHash"]),
            d["leafIdx"],
            d["treeSize"],
            [_b(p) for p in d["proof"] or []],
            _b(d["root"]),
        )
    else:
        merkle.verify_consistency(
            d["size1"],
            d["size2"],
            _b(d["root1"]),
            _b(d["root2"]),
            [_b(p) for p in d["proof"] or []],
        )


def test_the_vector_set_is_present(vectors_dir: Path) -> None:
    assert len(list((vectors_dir / "merkle").rglob("*.json"))) >= 190


@pytest.mark.parametrize("path", or_absent(_FILES), ids=lambda p: str(p.relative_to(_DIR)))
def test_merkle_vector(path: Path, vectors_dir: Path) -> None:
    d = json.loads(path.read_text())
    if d["wantErr"]:
        with pytest.raises(BrokenLink):
            _check(d)
    else:
        _check(d)
