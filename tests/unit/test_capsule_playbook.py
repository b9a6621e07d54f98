"""The playbook: policy changes in an append-only, signed RFC 9162 log; the policy in force at
any time comes with a proof that checks offline, and an edited history is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from attestation.signednote import NoteVerifier
from attestation.signers.software import Ed25519FileSigner
from capsules.catalogue import CATALOGUE
from capsules.errors import CapsuleError, CapsuleInvalid
from capsules.playbook import Playbook, verify_in_force
from factoryops.cli import cli

ORIGIN = "factoryops/playbook"
V1 = (CATALOGUE / "quality-ndt" / "capsule.toml").read_bytes()
V2 = V1.replace(b'version = "1.0.0"', b'version = "1.1.0"').replace(
    b"normal = [0.0, 60.0]", b"normal = [0.0, 80.0]"
)


@pytest.fixture
def signer(tmp_path: Path) -> Ed25519FileSigner:
    return Ed25519FileSigner.load_or_create(tmp_path / "hub-log.key")


def _book(folder: Path, signer: Ed25519FileSigner) -> Playbook:
    return Playbook.open(folder, ORIGIN, NoteVerifier.for_key(ORIGIN, signer.public_key()))


def _two_versions(folder: Path, signer: Ed25519FileSigner) -> Playbook:
    book = _book(folder, signer)
    book.record(V1, who="ana", why="pilot start", at="2026-12-01T08:00:00Z", signer=signer)
    book.record(V2, who="ben", why="AE band too tight", at="2026-12-03T08:00:00Z", signer=signer)
    return book


def test_the_policy_in_force_at_a_time_is_proven(tmp_path: Path, signer: Ed25519FileSigner) -> None:
    book = _two_versions(tmp_path / "pb", signer)
    verifier = NoteVerifier.for_key(ORIGIN, signer.public_key())
    before = verify_in_force(book.in_force("quality-ndt", "2026-12-02T12:00:00Z"), verifier)
    after = verify_in_force(book.in_force("quality-ndt", "2026-12-04T00:00:00+01:00"), verifier)
    assert (before.version, after.version) == ("1.0.0", "1.1.0")
    assert after.who == "ben" and after.replaces_sha256 == before.capsule_sha256
    assert "+normal = [0.0, 80.0]" in after.diff and "-normal = [0.0, 60.0]" in after.diff
    with pytest.raises(CapsuleError, match="no policy"):
        book.in_force("quality-ndt", "2026-11-30T00:00:00Z")


def test_reopening_rebuilds_the_signed_root(tmp_path: Path, signer: Ed25519FileSigner) -> None:
    _two_versions(tmp_path / "pb", signer)
    again = _book(tmp_path / "pb", signer)
    assert [e.version for e in again.history("quality-ndt")] == ["1.0.0", "1.1.0"]


def test_an_edited_entry_is_refused_on_open(tmp_path: Path, signer: Ed25519FileSigner) -> None:
    _two_versions(tmp_path / "pb", signer)
    entries = tmp_path / "pb" / "entries.jsonl"
    entries.write_bytes(entries.read_bytes().replace(b'"who":"ana"', b'"who":"eve"'))
    with pytest.raises(CapsuleError, match="do not rebuild the signed root"):
        _book(tmp_path / "pb", signer)


def test_a_removed_entry_is_refused_on_open(tmp_path: Path, signer: Ed25519FileSigner) -> None:
    _two_versions(tmp_path / "pb", signer)
    entries = tmp_path / "pb" / "entries.jsonl"
    entries.write_bytes(entries.read_bytes().splitlines(keepends=True)[0])
    with pytest.raises(CapsuleError, match="not of these 1 entries"):
        _book(tmp_path / "pb", signer)


def test_a_checkpoint_by_another_key_is_refused(tmp_path: Path, signer: Ed25519FileSigner) -> None:
    _two_versions(tmp_path / "pb", signer)
    other = Ed25519FileSigner.load_or_create(tmp_path / "other.key")
    with pytest.raises(CapsuleError, match="no signature by a trusted key"):
        _book(tmp_path / "pb", other)


def test_a_proof_with_a_changed_policy_fails(tmp_path: Path, signer: Ed25519FileSigner) -> None:
    import dataclasses

    book = _two_versions(tmp_path / "pb", signer)
    proof = book.in_force("quality-ndt", "2026-12-04T00:00:00Z")
    forged = dataclasses.replace(proof, entry=dataclasses.replace(proof.entry, why="nobody asked"))
    with pytest.raises(CapsuleError, match="root"):
        verify_in_force(forged, NoteVerifier.for_key(ORIGIN, signer.public_key()))


def test_changes_need_a_who_a_why_a_valid_capsule_and_a_change(
    tmp_path: Path, signer: Ed25519FileSigner
) -> None:
    book = _two_versions(tmp_path / "pb", signer)
    later = "2026-12-05T00:00:00Z"
    with pytest.raises(CapsuleError, match="who"):
        book.record(V1, who=" ", why="x", at=later, signer=signer)
    with pytest.raises(CapsuleError, match="already the policy in force"):
        book.record(V2, who="ana", why="again", at=later, signer=signer)
    with pytest.raises(CapsuleInvalid):
        book.record(V1.replace(b'unit = "us"', b'unit = "mm"'), who="a", why="b", at=later,
                    signer=signer)  # fmt: skip
    with pytest.raises(CapsuleError, match="before the policy in force"):
        book.record(V1, who="a", why="back", at="2026-12-02T00:00:00Z", signer=signer)
    assert len(_book(tmp_path / "pb", signer).entries) == 2  # nothing refused was written


def test_the_cli_records_and_proves_offline(tmp_path: Path, signer: Ed25519FileSigner) -> None:
    pem = tmp_path / "hub-log-key.pem"
    pem.write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    key, pb, out = tmp_path / "hub-log.key", tmp_path / "pb", tmp_path / "proof.json"
    runner = CliRunner()
    base = ["capsule", "playbook"]
    r = runner.invoke(
        cli,
        [*base, "record", str(CATALOGUE / "quality-ndt"), "--who", "ana", "--why", "pilot",
         "--at", "2026-12-01T08:00:00Z", "--dir", str(pb), "--key", str(key)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        cli,
        [*base, "at", "quality-ndt", "2026-12-02T00:00:00Z", "--dir", str(pb), "--trust",
         str(pem), "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, [*base, "verify", str(out), "--trust", str(pem)])
    assert r.exit_code == 0 and "VALID" in r.output
    doc = json.loads(out.read_text())
    doc["entry"]["who"] = "mallory"
    out.write_text(json.dumps(doc))
    r = runner.invoke(cli, [*base, "verify", str(out), "--trust", str(pem)])
    assert r.exit_code == 1
