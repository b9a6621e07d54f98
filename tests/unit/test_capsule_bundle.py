"""Published capsules: a bundle signed with the hub's Ed25519 key verifies; any change does not."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.signers.software import Ed25519FileSigner
from capsules.bundle import make_bundle, open_bundle, verify_bundle
from capsules.catalogue import CATALOGUE, find
from capsules.errors import BundleInvalid, CapsuleInvalid
from factoryops.cli import cli


def _key(tmp_path: Path, name: str = "hub-log.key") -> tuple[Ed25519FileSigner, bytes]:
    signer = Ed25519FileSigner.load_or_create(tmp_path / name)
    pem = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return signer, pem


@pytest.fixture
def signed(tmp_path: Path) -> tuple[bytes, bytes]:
    signer, pem = _key(tmp_path)
    cap = find("quality-ndt")
    return make_bundle(cap, CATALOGUE / "quality-ndt", signer), pem


def _edit(data: bytes, change: object) -> bytes:
    doc = json.loads(data)
    change(doc)  # type: ignore[operator]  # a test's lambda
    return json.dumps(doc).encode()


def test_a_published_capsule_verifies_with_the_hub_key(signed: tuple[bytes, bytes]) -> None:
    data, pem = signed
    cap, files = verify_bundle(data, [pem])
    assert cap.name == "quality-ndt" and set(files) == {"capsule.toml", "README.md"}


def test_a_bundle_signed_by_another_key_is_refused(
    signed: tuple[bytes, bytes], tmp_path: Path
) -> None:
    data, _ = signed
    _, other = _key(tmp_path, "other.key")
    with pytest.raises(BundleInvalid, match="not trusted"):
        verify_bundle(data, [other])


def test_a_changed_file_is_refused(signed: tuple[bytes, bytes]) -> None:
    data, pem = signed

    def change(doc: dict[str, dict[str, str]]) -> None:
        text = base64.b64decode(doc["files"]["README.md"]) + b"\nextra"
        doc["files"]["README.md"] = base64.b64encode(text).decode()

    with pytest.raises(BundleInvalid, match=r"README\.md: SHA-256"):
        verify_bundle(_edit(data, change), [pem])


def test_a_changed_manifest_breaks_the_signature(signed: tuple[bytes, bytes]) -> None:
    data, pem = signed

    def change(doc: dict[str, dict[str, str]]) -> None:
        doc["manifest"]["version"] = "9.9.9"

    with pytest.raises(BundleInvalid, match="signature"):
        verify_bundle(_edit(data, change), [pem])


def test_an_added_file_is_refused(signed: tuple[bytes, bytes]) -> None:
    data, pem = signed

    def change(doc: dict[str, dict[str, str]]) -> None:
        doc["files"]["extra.sh"] = base64.b64encode(b"rm -rf /").decode()

    with pytest.raises(BundleInvalid, match="files differ"):
        verify_bundle(_edit(data, change), [pem])


def test_a_signed_but_invalid_capsule_is_still_refused(tmp_path: Path) -> None:
    signer, pem = _key(tmp_path)
    folder = tmp_path / "cap"
    folder.mkdir()
    text = (CATALOGUE / "forming" / "capsule.toml").read_text()
    (folder / "capsule.toml").write_text(text)
    data = make_bundle(find("forming"), folder, signer)

    def change(doc: dict[str, dict[str, str]]) -> None:
        bad = text.replace('unit = "MN"', 'unit = "degC"').encode()
        doc["files"]["capsule.toml"] = base64.b64encode(bad).decode()

    with pytest.raises(BundleInvalid):  # the digest fails before the content is read
        verify_bundle(_edit(data, change), [pem])
    # a key holder who signs a broken capsule still gets it refused on the site
    (folder / "capsule.toml").write_text(text.replace('unit = "MN"', 'unit = "degC"'))
    signed_broken = make_bundle(find("forming"), folder, signer)
    with pytest.raises(CapsuleInvalid, match="unit"):
        verify_bundle(signed_broken, [pem])


def test_publish_and_verify_commands(tmp_path: Path) -> None:
    _, pem = _key(tmp_path)
    (tmp_path / "hub-log-key.pem").write_bytes(pem)
    runner = CliRunner()
    r = runner.invoke(
        cli,
        ["capsule", "publish", "forming", "--key", str(tmp_path / "hub-log.key"), "--out",
         str(tmp_path / "dist")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    bundle = tmp_path / "dist" / "forming-1.0.0.capsule.json"
    r = runner.invoke(
        cli, ["capsule", "verify", str(bundle), "--trust", str(tmp_path / "hub-log-key.pem")]
    )
    assert r.exit_code == 0 and "OK  forming 1.0.0" in r.output


_SAMPLE = make_bundle(
    find("forming"), CATALOGUE / "forming", Ed25519FileSigner(ed25519.Ed25519PrivateKey.generate())
)
_JSON = st.recursive(
    st.none() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_SAMPLE) - 1), st.binary(min_size=1, max_size=8))
def test_a_mangled_bundle_is_refused_with_a_reason(at: int, junk: bytes) -> None:
    data = _SAMPLE[:at] + junk + _SAMPLE[at + len(junk) :]
    refusal: Exception | None = None
    try:
        open_bundle(data)
    except (BundleInvalid, CapsuleInvalid) as err:  # any other exception fails the test
        refusal = err
    assert refusal is None or str(refusal)


@settings(max_examples=100, deadline=None)
@given(_JSON)
def test_any_json_is_refused_as_a_bundle(doc: object) -> None:
    with pytest.raises(BundleInvalid):
        open_bundle(json.dumps(doc).encode())
