"""Sealing a window: leaves, RFC 9162 root, micro-proof payload, one signature.

Pure except for the one ``signer.sign`` call, which the runtime runs off the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from agent.scoring import WindowScores
from agent.window import ClosedWindow
from attestation import merkle
from attestation.leafbatch import native_verdict
from attestation.microproof import (
    Gap,
    MicroProof,
    ResetRecord,
    chain_hash,
    compute_stats,
    sign_microproof,
)
from attestation.reading import encode_leaves
from attestation.signers.base import Signer

__all__ = ["SealedWindow", "seal"]

_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class SealedWindow:
    index: int
    window: ClosedWindow
    cose: bytes
    leaves: tuple[bytes, ...]
    scores: tuple[float, ...] | None

    @property
    def chain_hash(self) -> bytes:
        return chain_hash(self.cose)


def _root(leaves: Sequence[bytes], first_seq: int) -> bytes:
    """The RFC 9162 root of ``leaves``: in C when the extension is built (the hub's check of
    the same leaves, ~5x faster), else in Python. The root depends on the bytes alone, so
    both give the same; a leaf the C check refuses (past the hub's limits: the hub refuses
    it too) is hashed in Python."""
    got = native_verdict(leaves, first_seq)
    if isinstance(got, bytes):
        return got
    return merkle.root([_sha256(b"\x00" + x).digest() for x in leaves])  # RFC 9162 leaf hash


def seal(
    window: ClosedWindow,
    *,
    index: int,
    prev: bytes,
    signer: Signer,
    iat: int,
    gaps: Sequence[Gap] = (),
    scores: WindowScores | None = None,
    reset: ResetRecord | None = None,
) -> SealedWindow:
    rs = window.readings
    stamps = [r.ts_ns for r in rs]
    leaves = encode_leaves(rs)
    mp = MicroProof(
        window=index,
        first_seq=rs[0].seq,
        last_seq=rs[-1].seq,
        first_ts_ns=min(stamps),
        last_ts_ns=max(stamps),
        count=len(rs),
        root=_root(leaves, rs[0].seq),
        prev=prev,
        model=scores.model if scores else None,
        anomaly=scores.anomaly if scores else None,
        stats=compute_stats(rs),
        drift=scores.drift if scores else None,
        tpm_clock=signer.clock(),
        gaps=(*window.gaps, *gaps),  # the window's own records first (crash, overflow)
        recovery=window.recovery,
        reset=reset,
        source_gaps=window.source_gaps,
    )
    cose = sign_microproof(mp, signer, iat=iat)
    return SealedWindow(index, window, cose, leaves, scores.scores if scores else None)
