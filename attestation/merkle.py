"""RFC 9162 Merkle tree hashing with inclusion and consistency proofs.

Everything works on leaf *hashes* (SHA-256(0x00 || leaf), §2.1.1); a tree of
``n`` leaves is the list of their hashes. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from attestation.errors import BrokenLink

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "PerfectNode",
    "consistency_proof",
    "consistency_proof_from",
    "hash_children",
    "inclusion_path",
    "inclusion_path_from",
    "inclusion_path_length",
    "perfect_nodes_completed",
    "range_hash",
    "root",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 §2.1.1: MTH({}) = HASH()
_sha256 = hashlib.sha256


def hash_children(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) computed bottom-up.

    Pairing neighbours level by level and carrying an odd last node up unchanged
    gives the same tree as §2.1.1's split at the largest power of two below n.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [
            _sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of §2.1.3.1, leaf to root, built bottom-up."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf index {index} outside a tree of {len(leaf_hashes)} leaves")
    path: list[bytes] = []
    level = list(leaf_hashes)
    i = index
    while len(level) > 1:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        nxt = [hash_children(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        i //= 2
    return path


def inclusion_path_length(index: int, size: int) -> int:
    """How many hashes an honest inclusion path for ``index`` in ``size`` leaves has."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside a tree of {size} leaves")
    length, i, n = 0, index, size
    while n > 1:
        if (i ^ 1) < n:
            length += 1
        i, n = i // 2, (n + 1) // 2
    return length


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """Root implied by an inclusion path (§2.1.3.2 steps 1-4); raises on a wrong shape."""
    _check_hash_sizes("inclusion", leaf_hash=leaf_hash, path=path)
    if not 0 <= index < size:
        raise BrokenLink("inclusion", f"leaf index {index} outside a tree of {size} leaves")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in path:
        if sn == 0:  # (4a) the path is longer than the tree is deep
            raise BrokenLink("inclusion", f"path has {len(path)} hashes, more than the tree needs")
        if fn & 1 or fn == sn:  # (4b)
            r = _sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1  # (4c)
        sn >>= 1
    if sn != 0:  # (5) the path is shorter than the tree is deep
        raise BrokenLink("inclusion", f"path has {len(path)} hashes, fewer than the tree needs")
    return r


def _check_hash_sizes(link: str, **fields: bytes | Sequence[bytes]) -> None:
    """Every hash is a 32-byte SHA-256 digest; name the first that is not."""
    for name, value in fields.items():
        items = [value] if isinstance(value, bytes) else list(value)
        for i, h in enumerate(items):
            if len(h) != HASH_SIZE:
                where = name if isinstance(value, bytes) else f"{name}[{i}]"
                raise BrokenLink(link, f"{where} has {len(h)} bytes, expected {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes
) -> None:
    """RFC 9162 §2.1.3.2; raises ``BrokenLink`` naming ``inclusion`` or ``root``."""
    _check_hash_sizes("root", root=expected_root)
    got = root_from_inclusion(leaf_hash, index, size, path)
    if got != expected_root:
        raise BrokenLink(
            "root",
            f"recomputed root {got.hex()} does not match the signed root {expected_root.hex()}",
        )


def _subtree(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    return root(leaf_hashes[lo:hi])


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(m, D[n]) of §2.1.4.1 between the first ``size1`` leaves and all of them."""
    n = len(leaf_hashes)
    if not 0 <= size1 <= n:
        raise ValueError(f"size1 {size1} outside 0..{n}")
    if size1 in (0, n):
        return []

    def sub(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if complete else [_subtree(leaf_hashes, lo, hi)]
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            return [*sub(m, lo, lo + k, complete), _subtree(leaf_hashes, lo + k, hi)]
        return [*sub(m - k, lo + k, hi, False), _subtree(leaf_hashes, lo, lo + k)]

    return sub(size1, 0, n, True)


def verify_consistency(  # noqa: PLR0912 - RFC 9162 §2.1.4.2 step by step, as the RFC numbers them
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2; raises ``BrokenLink("consistency", ...)`` when it fails."""

    def fail(why: str) -> BrokenLink:
        return BrokenLink("consistency", f"tree {size1} -> {size2}: {why}")

    if size2 < size1:
        raise fail("the second tree is smaller than the first")
    if size1 == 0:
        # RFC 9162 defines no proof from the empty tree; accepting "anything"
        # would let a verifier pin an empty checkpoint and then accept any log.
        raise fail("no consistency proof exists from the empty tree")
    if size1 == size2:
        if proof:
            raise fail("equal sizes need an empty proof")
        if root1 != root2:
            raise fail("equal sizes but different roots")
        return
    _check_hash_sizes("consistency", root1=root1, root2=root2, proof=proof)
    if not proof:  # (1)
        raise fail("empty proof")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # (2) first is an exact power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1  # (3)
    while fn & 1:  # (4)
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # (5)
    for c in path[1:]:  # (6)
        if sn == 0:  # (6a)
            raise fail("proof longer than the trees need")
        if fn & 1 or fn == sn:  # (6b)
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1  # (6c)
        sn >>= 1
    if sn != 0:  # (7)
        raise fail("proof shorter than the trees need")
    if fr != root1:
        raise fail(f"old root recomputes to {fr.hex()}, expected {root1.hex()}")
    if sr != root2:
        raise fail(f"new root recomputes to {sr.hex()}, expected {root2.hex()}")


# --- proofs from stored perfect subtrees (a log that does not fit in memory) -----------------
#
# Every subtree RFC 9162 recursion touches is either perfect and aligned (2^level leaves
# starting at a multiple of 2^level) or lies on the right edge of the tree. A log that keeps
# the hash of each perfect aligned subtree (``PerfectNode(level, index)``; level 0 = the
# leaf hashes) can build any root, inclusion path or consistency proof with O(log n)
# lookups of that store instead of reading every leaf.

PerfectNode = Callable[[int, int], bytes]  # (level, index) -> hash of leaves [i*2^l, (i+1)*2^l)


def range_hash(node: PerfectNode, lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) from perfect subtrees (``lo`` aligned as the RFC recursion makes it)."""
    n = hi - lo
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and lo % n == 0:  # perfect and aligned: stored
        level = n.bit_length() - 1
        return node(level, lo >> level)
    k = _largest_power_of_two_below(n)
    return hash_children(range_hash(node, lo, lo + k), range_hash(node, lo + k, hi))


def inclusion_path_from(node: PerfectNode, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) (§2.1.3.1) from perfect subtrees; equals ``inclusion_path``."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside a tree of {size} leaves")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            path.append(range_hash(node, lo + k, hi))
            hi = lo + k
        else:
            path.append(range_hash(node, lo, lo + k))
            lo = lo + k
    path.reverse()  # leaf to root
    return path


def consistency_proof_from(node: PerfectNode, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[size2]) (§2.1.4.1) from perfect subtrees; equals ``consistency_proof``."""
    if not 0 <= size1 <= size2:
        raise ValueError(f"size1 {size1} outside 0..{size2}")
    if size1 in (0, size2):
        return []

    def sub(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if complete else [range_hash(node, lo, hi)]
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            return [*sub(m, lo, lo + k, complete), range_hash(node, lo + k, hi)]
        return [*sub(m - k, lo + k, hi, False), range_hash(node, lo, lo + k)]

    return sub(size1, 0, size2, True)


def perfect_nodes_completed(
    index: int, leaf: bytes, node: PerfectNode
) -> list[tuple[int, int, bytes]]:
    """The perfect subtrees that appending leaf ``index`` completes: (level, index, hash).

    Appending leaf i completes the level-l subtree ending at i for every l with
    2^l dividing i + 1; each is the parent of the completed one below it and its stored
    left sibling.
    """
    out: list[tuple[int, int, bytes]] = []
    h, level, i = leaf, 0, index
    while i & 1:  # i is a right child at this level: its parent is complete
        left = node(level, i - 1)
        h, level, i = hash_children(left, h), level + 1, i >> 1
        out.append((level, i, h))
    return out
