"""COSE_Sign1 conformance against cose-wg/Examples in ../shared/vectors/cose."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import AttestationError, UnsupportedAlgorithm, cose
from tests.conftest import SHARED, or_absent

_DIR = SHARED / "vectors" / "cose"
_FILES = sorted(_DIR.glob("*.json")) if _DIR.is_dir() else []
_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def _b64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _verify(path: Path) -> None:
    d = json.loads(path.read_text())
    sign0 = d["input"]["sign0"]
    k = sign0["key"]
    x, y = int.from_bytes(_b64u(k["x"]), "big"), int.from_bytes(_b64u(k["y"]), "big")
    key = ec.EllipticCurvePublicNumbers(x, y, _CURVES[k["crv"]]).public_key()
    msg = cose.decode_sign1(bytes.fromhex(d["output"]["cbor"]))
    cose.verify_sign1(msg, key, external_aad=bytes.fromhex(sign0.get("external", "")))


def _alg(path: Path) -> str:
    sign0 = json.loads(path.read_text())["input"]["sign0"]
    return str(sign0.get("alg") or sign0.get("protected", {}).get("alg"))


def test_the_vector_set_is_present(vectors_dir: Path) -> None:
    assert len(list((vectors_dir / "cose").glob("*.json"))) >= 13


@pytest.mark.parametrize(
    "path",
    or_absent(
        [p for p in _FILES if "-pass-" in p.name or ("ecdsa" in p.name and _alg(p) == "ES256")]
    ),
    ids=lambda p: p.name,
)
def test_es256_vector_verifies(path: Path, vectors_dir: Path) -> None:
    _verify(path)


@pytest.mark.parametrize(
    "path", or_absent([p for p in _FILES if "-fail-" in p.name]), ids=lambda p: p.name
)
def test_sign_fail_vector_is_rejected(path: Path, vectors_dir: Path) -> None:
    with pytest.raises(AttestationError):
        _verify(path)


@pytest.mark.parametrize(
    "path",
    or_absent([p for p in _FILES if "ecdsa" in p.name and _alg(p) != "ES256"]),
    ids=lambda p: p.name,
)
def test_es384_and_es512_are_refused_as_unsupported_not_crashed(
    path: Path, vectors_dir: Path
) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        _verify(path)
