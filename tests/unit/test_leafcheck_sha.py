"""The native tree's SHA-256 gives hashlib's roots with each of its backends.

``attestation/_native/leafcheck.c`` hashes a level's nodes sixteen at a time in AVX-512
lanes or four at a time with the x86 SHA extensions where the CPU has them (ADR 0011), and
one at a time through OpenSSL anywhere. Each is checked here against the Python reference
(``merkle.root`` of hashlib leaf hashes) on windows whose leaves cross SHA-256's block
boundaries (a leaf of 54, 55, 118 or 119 bytes plus its prefix byte fills a padded block
exactly; the next byte needs another block) and whose sizes leave every possible partial
group at every level.
"""

from __future__ import annotations

import functools
import importlib
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import merkle
from attestation.leafbatch import (
    NATIVE,
    sequence_root,
    sha_backend,
    sha_backends,
    using_sha_backend,
    window_root,
)
from attestation.reading import Reading, encode_leaf, leaf_hash
from tests.conftest import missing


def _module() -> ModuleType:
    if not NATIVE:
        missing("the native window check was not built (no C compiler or OpenSSL headers)")
    return importlib.import_module("attestation._leafcheck")


@functools.cache  # read once, not once a Hypothesis example
def _cpu_flags() -> frozenset[str]:
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    return frozenset(
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()
    )


ALL_BACKENDS = ["openssl", "sha-ni", "avx512"]
NEEDS = {"openssl": set(), "sha-ni": {"sha_ni"}, "avx512": {"avx512f", "avx512bw"}}
# the paths this CPU can run: a path the CPU lacks is not a test here (never a skip, which
# CI refuses); the last test checks the native module offers exactly these
BACKENDS = [b for b in ALL_BACKENDS if NEEDS[b] <= _cpu_flags()]


def _using(backend: str) -> AbstractContextManager[None]:
    _module()
    return using_sha_backend(backend)


def _window(first_seq: int, signal_lengths: list[int]) -> list[bytes]:
    """Leaves whose sizes follow the signal names' lengths (one byte a character here)."""
    return [
        encode_leaf(Reading(first_seq + i, i, "s" * n, float(i), "u"))
        for i, n in enumerate(signal_lengths)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=300)
@given(
    first_seq=st.integers(0, 2**40),
    signal_lengths=st.lists(st.integers(1, 128), min_size=1, max_size=70),
)
def test_both_backends_give_the_reference_root(
    backend: str, first_seq: int, signal_lengths: list[int]
) -> None:
    leaves = _window(first_seq, signal_lengths)
    reference = merkle.root([leaf_hash(x) for x in leaves])
    with _using(backend):
        assert window_root(leaves, first_seq) == reference
        assert sequence_root(b"".join(leaves), len(leaves), first_seq) == reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", range(1, 40))
def test_every_partial_group_at_every_level(backend: str, n: int) -> None:
    leaves = _window(7, [1 + (i * 37) % 128 for i in range(n)])  # lanes of mixed block counts
    with _using(backend):
        assert window_root(leaves, 7) == merkle.root([leaf_hash(x) for x in leaves])


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaf_sizes_at_the_block_boundaries(backend: str) -> None:
    sizes = set()
    for n in range(1, 129):
        (leaf,) = _window(0, [n])
        sizes.add(len(leaf))
    assert {54, 55, 56, 118, 119, 120} <= sizes  # the boundaries are really crossed
    leaves = _window(0, list(range(1, 129)))
    with _using(backend):
        assert window_root(leaves, 0) == merkle.root([leaf_hash(x) for x in leaves])


def test_the_backend_that_was_fastest_at_import_is_used() -> None:
    native = _module()
    assert sha_backends() == list(reversed(BACKENDS))
    timed = native.calibration()  # ns each backend took to root the same tree at import
    assert sorted(timed) == sorted(BACKENDS)
    assert all(ns > 0 for ns in timed.values())
    assert sha_backend() == min(timed, key=timed.__getitem__)


def test_an_unknown_backend_is_refused_and_changes_nothing() -> None:
    native = _module()
    before = sha_backend()
    with pytest.raises(ValueError, match="no SHA-256 backend 'md5'"), using_sha_backend("md5"):
        pass
    with pytest.raises(TypeError):
        native.use_backend(1)
    assert sha_backend() == before
