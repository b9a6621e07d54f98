"""Checkpoint memory: a reader notices when the hub shows two histories (a fork)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation import merkle
from attestation.errors import BrokenLink
from attestation.reading import leaf_hash
from attestation.signednote import Checkpoint, NoteVerifier, format_checkpoint, sign_note
from attestation.witness import CheckpointMemory, ProofSource

ORIGIN = "example.test/log"
KEY = ed25519.Ed25519PrivateKey.generate()
VERIFIER = NoteVerifier.for_key(ORIGIN, KEY.public_key())


def _leaves(tag: str, n: int) -> list[bytes]:
    return [leaf_hash(f"{tag}{i}".encode()) for i in range(n)]


def _note(leaves: Sequence[bytes], key: ed25519.Ed25519PrivateKey = KEY) -> str:
    cp = Checkpoint(ORIGIN, len(leaves), merkle.root(list(leaves)), ())
    return sign_note(format_checkpoint(cp), ORIGIN, key.public_key(), key.sign)


def _proofs(leaves: Sequence[bytes]) -> ProofSource:
    def source(size1: int, size2: int) -> list[bytes]:
        return merkle.consistency_proof(list(leaves[:size2]), size1)

    return source


def test_a_growing_log_is_followed_and_remembered(tmp_path: Path) -> None:
    leaves = _leaves("a", 20)
    mem = CheckpointMemory(tmp_path / "cp.json", [VERIFIER])
    assert mem.observe(_note(leaves[:5]), _proofs(leaves)).status == "first"
    assert mem.observe(_note(leaves[:5]), _proofs(leaves)).status == "same"
    assert mem.observe(_note(leaves[:13]), _proofs(leaves)).status == "newer"
    assert mem.observe(_note(leaves[:8]), _proofs(leaves)).status == "older"  # a prefix
    again = CheckpointMemory(tmp_path / "cp.json", [VERIFIER])  # survives a restart
    newest = again.newest(ORIGIN)
    assert newest is not None and newest[0].size == 13
    assert again.forks == []


def test_two_roots_for_one_size_is_a_fork_kept_as_evidence(tmp_path: Path) -> None:
    mem = CheckpointMemory(tmp_path / "cp.json", [VERIFIER])
    mem.observe(_note(_leaves("a", 7)), _proofs(_leaves("a", 7)))
    verdict = mem.observe(_note(_leaves("b", 7)), _proofs(_leaves("b", 7)))
    assert verdict.status == "fork" and not verdict.ok
    (fork,) = CheckpointMemory(tmp_path / "cp.json", [VERIFIER]).forks
    assert "two roots for tree size 7" in fork["why"]
    assert fork["remembered"] != fork["seen"]


def test_a_rewritten_history_fails_consistency_and_is_not_remembered(tmp_path: Path) -> None:
    honest, rewritten = _leaves("a", 30), _leaves("a", 10) + _leaves("x", 20)
    mem = CheckpointMemory(tmp_path / "cp.json", [VERIFIER])
    mem.observe(_note(honest[:12]), _proofs(honest))
    # the hub's new tree keeps the first 10 entries but rewrote 10 and 11
    verdict = mem.observe(_note(rewritten), _proofs(rewritten))
    assert verdict.status == "fork"
    newest = mem.newest(ORIGIN)
    assert newest is not None and newest[0].size == 12  # the rewritten tree was not taken


def test_offline_a_larger_tree_is_unchecked_not_trusted(tmp_path: Path) -> None:
    leaves = _leaves("a", 9)
    mem = CheckpointMemory(tmp_path / "cp.json", [VERIFIER])
    mem.observe(_note(leaves[:4]), _proofs(leaves))
    verdict = mem.observe(_note(leaves), lambda a, b: None)
    assert verdict.status == "unchecked" and verdict.ok
    newest = mem.newest(ORIGIN)
    assert newest is not None and newest[0].size == 4


def test_a_checkpoint_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    mem = CheckpointMemory(tmp_path / "cp.json", [VERIFIER])
    forged = _note(_leaves("a", 3), key=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(BrokenLink):
        mem.observe(forged, lambda a, b: [])
    assert mem.newest(ORIGIN) is None  # nothing remembered either
