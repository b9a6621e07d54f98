"""attestation: the proof format and its verification, pure and shared by every side.

Readings codec, RFC 9162 Merkle, COSE micro-proofs, receipts and the offline verifier;
signers/ holds the ``Signer`` port and its adapters.
"""

from attestation.errors import (
    AttestationError,
    BrokenLink,
    KeyFileError,
    MalformedInput,
    Noncanonical,
    UnsupportedAlgorithm,
)
from attestation.microproof import (
    GENESIS_PREV,
    MicroProof,
    SignedMicroProof,
    chain_hash,
    parse_microproof,
    sign_microproof,
)
from attestation.reading import Reading, decode_leaf, encode_leaf, leaf_hash
from attestation.receipt import Receipt, build_receipt, receipt_from_json, receipt_from_leaves
from attestation.utid import parse_utid, utid_bytes, utid_text
from attestation.verify import (
    TrustAnchors,
    Verdict,
    load_anchors,
    report_receipt,
    verify_chain,
    verify_receipt,
)

__all__ = [
    "GENESIS_PREV",
    "AttestationError",
    "BrokenLink",
    "KeyFileError",
    "MalformedInput",
    "MicroProof",
    "Noncanonical",
    "Reading",
    "Receipt",
    "SignedMicroProof",
    "TrustAnchors",
    "UnsupportedAlgorithm",
    "Verdict",
    "build_receipt",
    "chain_hash",
    "decode_leaf",
    "encode_leaf",
    "leaf_hash",
    "load_anchors",
    "parse_microproof",
    "parse_utid",
    "receipt_from_json",
    "receipt_from_leaves",
    "report_receipt",
    "sign_microproof",
    "utid_bytes",
    "utid_text",
    "verify_chain",
    "verify_receipt",
]
