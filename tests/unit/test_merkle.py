"""RFC 9162 Merkle tree: bottom-up root equals the spec's recursive MTH; proofs verify."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation import BrokenLink, merkle


def _mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, written as the spec states it (recursive split)."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return merkle.hash_children(_mth(hashes[:k]), _mth(hashes[k:]))


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + i.to_bytes(4, "big")).digest() for i in range(n)]


@given(st.integers(0, 300))
def test_bottom_up_root_equals_recursive_mth(n: int) -> None:
    assert merkle.root(_leaves(n)) == _mth(_leaves(n))


@given(st.integers(1, 130), st.data())
def test_every_inclusion_path_verifies(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    i = data.draw(st.integers(0, n - 1))
    path = merkle.inclusion_path(leaves, i)
    assert len(path) == merkle.inclusion_path_length(i, n)
    merkle.verify_inclusion(leaves[i], i, n, path, merkle.root(leaves))


@given(st.integers(1, 130), st.data())
def test_inclusion_proof_rejects_a_flipped_bit(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    i = data.draw(st.integers(0, n - 1))
    path = merkle.inclusion_path(leaves, i)
    root = merkle.root(leaves)
    target = data.draw(st.sampled_from(["leaf", "root", *(["path"] if path else [])]))
    bit = data.draw(st.integers(0, 255))
    flip = bytearray((leaves[i] if target == "leaf" else root) if target != "path" else b"")
    if target == "path":
        j = data.draw(st.integers(0, len(path) - 1))
        p = bytearray(path[j])
        p[bit // 8] ^= 1 << (bit % 8)
        path[j] = bytes(p)
        leaf, want = leaves[i], root
    else:
        flip[bit // 8] ^= 1 << (bit % 8)
        leaf, want = (bytes(flip), root) if target == "leaf" else (leaves[i], bytes(flip))
    with pytest.raises(BrokenLink):
        merkle.verify_inclusion(leaf, i, n, path, want)


@given(st.integers(1, 100), st.data())
def test_every_consistency_proof_verifies(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    m = data.draw(st.integers(1, n))
    proof = merkle.consistency_proof(leaves, m)
    merkle.verify_consistency(m, n, merkle.root(leaves[:m]), merkle.root(leaves), proof)


@given(st.integers(2, 100), st.data())
def test_consistency_proof_rejects_a_rewritten_history(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    m = data.draw(st.integers(1, n - 1))
    forked = list(leaves)
    j = data.draw(st.integers(0, m - 1))
    forked[j] = hashlib.sha256(b"forged").digest()
    proof = merkle.consistency_proof(forked, m)
    with pytest.raises(BrokenLink, match="consistency"):
        merkle.verify_consistency(m, n, merkle.root(leaves[:m]), merkle.root(forked), proof)


def test_a_path_of_the_wrong_length_names_the_inclusion_link() -> None:
    leaves = _leaves(5)
    path = merkle.inclusion_path(leaves, 1)
    with pytest.raises(BrokenLink, match="fewer than the tree needs") as err:
        merkle.verify_inclusion(leaves[1], 1, 5, path[:-1], merkle.root(leaves))
    assert err.value.link == "inclusion"


@given(st.integers(min_value=1, max_value=300), st.data())
def test_proofs_from_stored_perfect_subtrees_equal_the_reference(
    n: int, data: st.DataObject
) -> None:
    from attestation.merkle import (
        consistency_proof_from,
        inclusion_path_from,
        perfect_nodes_completed,
        range_hash,
    )

    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]
    store: dict[tuple[int, int], bytes] = {}
    for i, h in enumerate(leaves):  # what a log appends, one leaf at a time
        store[(0, i)] = h
        for level, idx, node in perfect_nodes_completed(i, h, lambda lv, ix: store[(lv, ix)]):
            store[(level, idx)] = node
    lookups: list[tuple[int, int]] = []

    def node(level: int, idx: int) -> bytes:
        lookups.append((level, idx))
        return store[(level, idx)]

    size = data.draw(st.integers(min_value=1, max_value=n))
    assert range_hash(node, 0, size) == merkle.root(leaves[:size])
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    lookups.clear()
    assert inclusion_path_from(node, index, size) == merkle.inclusion_path(leaves[:size], index)
    assert len(lookups) <= 2 * size.bit_length() ** 2  # O(log^2 n), never O(n)
    m = data.draw(st.integers(min_value=0, max_value=size))
    assert consistency_proof_from(node, m, size) == merkle.consistency_proof(leaves[:size], m)
