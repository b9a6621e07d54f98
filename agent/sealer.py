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
from attestation.microproof import Gap, MicroProof, chain_hash, compute_stats, sign_microproof
from attestation.reading import encode_leaf
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


def seal(
    window: ClosedWindow,
    *,
    index: int,
    prev: bytes,
    signer: Signer,
    iat: int,
    gaps: Sequence[Gap] = (),
    scores: WindowScores | None = None,
) -> SealedWindow:
    rs = window.readings
    stamps = [r.ts_ns for r in rs]
    leaves = tuple(map(encode_leaf, rs))
    mp = MicroProof(
        window=index,
        first_seq=rs[0].seq,
        last_seq=rs[-1].seq,
        first_ts_ns=min(stamps),
        last_ts_ns=max(stamps),
        count=len(rs),
        root=merkle.root([_sha256(b"\x00" + x).digest() for x in leaves]),  # RFC 9162 leaf
        prev=prev,
        model=scores.model if scores else None,
        anomaly=scores.anomaly if scores else None,
        stats=compute_stats(rs),
        drift=scores.drift if scores else None,
        tpm_clock=signer.clock(),
        gaps=(*window.gaps, *gaps),  # the window's own records first (crash, overflow)
    )
    cose = sign_microproof(mp, signer, iat=iat)
    return SealedWindow(index, window, cose, leaves, scores.scores if scores else None)
