"""COSE receipts of inclusion in the hub's RFC 9162 log (IETF COSE Merkle tree proofs).

COSE_Sign1, protected {alg: -8 (EdDSA), vds (395): 1 (RFC9162_SHA256)}, unprotected
{vdp (396): {-1: [bstr .cbor [tree_size, leaf_index, [path]]]}}, detached payload = root.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation import cborsafe, cose, merkle
from attestation.errors import BrokenLink, MalformedInput
from attestation.signednote import NoteVerifier, open_note, parse_checkpoint
from attestation.signers.base import ALG_EDDSA, Signer

__all__ = ["LogInclusion", "build_log_receipt", "check_log", "entry_hash", "verify_log_receipt"]

HDR_VDS = 395
HDR_VDP = 396
VDS_RFC9162_SHA256 = 1
VDP_INCLUSION = -1


@dataclass(frozen=True, slots=True)
class LogInclusion:
    tree_size: int
    leaf_index: int
    root: bytes


def entry_hash(entry: bytes) -> bytes:
    """The log's leaf hash of an entry (the exact micro-proof COSE bytes)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def build_log_receipt(
    signer: Signer, tree_size: int, leaf_index: int, path: list[bytes], root: bytes
) -> bytes:
    """A receipt that the entry at ``leaf_index`` is in the tree of ``tree_size`` leaves."""
    proof = cbor2.dumps([tree_size, leaf_index, path])
    return cose.sign1(
        root,
        signer,
        protected={HDR_VDS: VDS_RFC9162_SHA256},
        unprotected={HDR_VDP: {VDP_INCLUSION: [proof]}},
        detached=True,
    )


def verify_log_receipt(receipt: bytes, entry: bytes, key: ed25519.Ed25519PublicKey) -> LogInclusion:
    """Recompute the root from ``entry`` and the proof, then check the hub's signature on it."""
    msg = cose.decode_sign1(receipt)
    if msg.protected.get(cose.HDR_ALG) != ALG_EDDSA:
        raise MalformedInput("log_receipt", "alg must be EdDSA (-8) in the protected header")
    if msg.protected.get(HDR_VDS) != VDS_RFC9162_SHA256:
        raise MalformedInput("log_receipt", "vds must be 1 (RFC9162_SHA256)")
    try:
        (raw,) = msg.unprotected[HDR_VDP][VDP_INCLUSION]
        size, index, path = cborsafe.loads(raw)
    except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as err:
        raise MalformedInput("log_receipt", f"no readable inclusion proof: {err}") from err
    if not (
        isinstance(size, int)
        and isinstance(index, int)
        and isinstance(path, list)
        and all(isinstance(p, bytes) for p in path)
    ):
        raise MalformedInput("log_receipt", "inclusion proof must be [size, index, [bstr]]")
    try:
        root = merkle.root_from_inclusion(entry_hash(entry), index, size, path)
    except BrokenLink as err:
        raise BrokenLink("log", f"inclusion proof: {err}") from err
    try:
        cose.verify_sign1(msg, key, detached_payload=root)
    except BrokenLink as err:
        raise BrokenLink(
            "log", "the log receipt is not signed by the pinned hub key over this entry's root"
        ) from err
    return LogInclusion(size, index, root)


def check_log(
    log_receipt: bytes,
    checkpoint: str | None,
    entry: bytes,
    keys: tuple[ed25519.Ed25519PublicKey, ...],
) -> str:
    """Receipt under one of ``keys``; checkpoint (if given) signed by it for the same tree."""
    last: BrokenLink | None = None
    for key in keys:
        try:
            inc = verify_log_receipt(log_receipt, entry, key)
        except BrokenLink as err:
            last = err
            continue
        if checkpoint is None:
            return f"in the hub log at index {inc.leaf_index} of {inc.tree_size}"
        origin = checkpoint.split("\n", 1)[0]
        cp = parse_checkpoint(open_note(checkpoint, [NoteVerifier.for_key(origin, key)]))
        if (cp.size, cp.root) != (inc.tree_size, inc.root):
            raise BrokenLink(
                "checkpoint",
                f"checkpoint is for size {cp.size}, the receipt for"
                f" {inc.tree_size} (or their roots differ)",
            )
        return f"in log {cp.origin} at index {inc.leaf_index} of {cp.size} (signed checkpoint)"
    raise last or BrokenLink("log", "no hub key pinned")
