"""Offline verification of per-reading receipts and micro-proof chains.

One pipeline, one error per broken link; ``verify_receipt`` raises, ``report_receipt``
returns a ``Verdict`` for ``factoryops verify --json``. Steps of ``verify_receipt``:

1. parse the micro-proof (headers and payload) in its one canonical form: any other
   encoding of it is refused as ``noncanonical`` (ARCHITECTURE.md "One canonical form")
2. key: the kid names a trusted device key, or a device certificate from a pinned fleet CA
3. signature: the COSE_Sign1 signature holds under that key
4. reading: the reading sits where the signed window says (seq, index, time, value range)
5. inclusion: the path has the shape the window's tree needs
6. root: leaf + path recompute the signed Merkle root
7. log: the hub's log receipt and checkpoint (when present and a hub key is pinned)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attestation import merkle
from attestation.certs import verify_device_certificate
from attestation.cose import PublicKey
from attestation.errors import AttestationError, BrokenLink, MalformedInput, Noncanonical
from attestation.logreceipt import check_log
from attestation.microproof import (
    GENESIS_PREV,
    ResetRecord,
    SignedMicroProof,
    SourceGap,
    chain_hash,
    parse_microproof,
    verify_microproof_signature,
)
from attestation.reading import encode_leaf, leaf_hash
from attestation.receipt import Receipt, reading_json
from attestation.utid import utid_bytes, utid_text

__all__ = [
    "LogCheck",
    "TrustAnchors",
    "Verdict",
    "load_anchors",
    "report_receipt",
    "verify_chain",
    "verify_receipt",
]

# A log check takes the receipt, the parsed micro-proof and the anchors; it raises
# BrokenLink("log" | "checkpoint" | "consistency") or returns a note for the verdict.
LogCheck = Callable[[Receipt, SignedMicroProof, "TrustAnchors"], str]


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """What an auditor pins: fleet CAs, raw device keys, hub log keys."""

    fleet_cas: tuple[x509.Certificate, ...] = ()
    device_keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
    hub_keys: tuple[ed25519.Ed25519PublicKey, ...] = ()
    allow_software_keys: bool = True

    def device_key(self, kid: bytes) -> PublicKey | None:
        for key in self.device_keys:
            der = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if utid_bytes(der) == kid:
                return key
        return None


def load_anchors(paths: Sequence[Path], *, allow_software_keys: bool = True) -> TrustAnchors:
    """Read PEM files holding certificates (fleet CAs) and public keys (device or hub)."""
    cas: list[x509.Certificate] = []
    devices: list[ec.EllipticCurvePublicKey] = []
    hubs: list[ed25519.Ed25519PublicKey] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise AttestationError(f"cannot read trust anchor {path}: {err}") from err
        if b"-----BEGIN CERTIFICATE-----" in data:
            cas.extend(x509.load_pem_x509_certificates(data))
            continue
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as err:
            raise MalformedInput(str(path), "neither a PEM certificate nor a public key") from err
        if isinstance(key, ec.EllipticCurvePublicKey):
            devices.append(key)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            hubs.append(key)
        else:
            raise MalformedInput(str(path), f"unsupported key type {type(key).__name__}")
    return TrustAnchors(tuple(cas), tuple(devices), tuple(hubs), allow_software_keys)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a verification, in a form ``--json`` prints as is."""

    valid: bool
    link: str | None = None
    error: str | None = None
    hint: str | None = None
    utid: str | None = None
    key_kind: str | None = None
    reading: dict[str, Any] | None = None
    checked: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    # the signed window's silent sources (key 16), once its signature held
    source_gaps: tuple[SourceGap, ...] = ()
    # the window restarts the chain from the hub's head (key 18, ADR 0027)
    reset: ResetRecord | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "link": self.link,
            "error": self.error,
            "hint": self.hint,
            "utid": self.utid,
            "key_kind": self.key_kind,
            "reading": self.reading,
            "checked": list(self.checked),
            "notes": list(self.notes),
            "source_gaps": [
                {"source": g.source, "first_ts_ns": g.first_ts_ns, "last_ts_ns": g.last_ts_ns,
                 "reason": g.reason}
                for g in self.source_gaps
            ],
            "reset": None if self.reset is None else {
                "reason": self.reset.reason, "hub_window": self.reset.hub_window,
                "hub_last_seq": self.reset.hub_last_seq},
        }  # fmt: skip


@dataclass
class _Progress:
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    utid: str | None = None
    key_kind: str | None = None
    source_gaps: tuple[SourceGap, ...] = ()
    reset: ResetRecord | None = None


def _resolve_key(
    smp: SignedMicroProof,
    certificates: Sequence[bytes],
    anchors: TrustAnchors,
    now: dt.datetime,
    progress: _Progress,
) -> PublicKey:
    if certificates and anchors.fleet_cas:
        dc = verify_device_certificate(certificates[0], list(anchors.fleet_cas), now=now)
        progress.checked.append("certificate")
        if dc.utid != smp.kid:
            raise BrokenLink(
                "key", f"certificate is for {utid_text(dc.utid)}, proof is from {smp.utid}"
            )
        if dc.key_kind == "software" and not anchors.allow_software_keys:
            raise BrokenLink(
                "key",
                f"{smp.utid} is a software key and policy requires a TPM key",
                hint="enroll the gateway with its TPM (`factoryops provision enroll`)",
            )
        progress.key_kind = dc.key_kind
        return dc.public_key
    key = anchors.device_key(smp.kid)
    if key is None:
        raise BrokenLink(
            "key",
            f"{smp.utid} is not a trusted device key",
            hint="pin the hub's fleet CA certificate or the device's public key with --trust",
        )
    return key


def verify_receipt(
    receipt: Receipt,
    anchors: TrustAnchors,
    *,
    now: dt.datetime | None = None,
    log_check: LogCheck | None = None,
    progress: _Progress | None = None,
) -> SignedMicroProof:
    """Check every link of ``receipt``; raise the first ``BrokenLink`` found."""
    now = now or dt.datetime.now(dt.UTC)
    progress = progress if progress is not None else _Progress()
    smp = parse_microproof(receipt.microproof)  # (1) parse
    progress.utid = smp.utid
    key = _resolve_key(smp, receipt.certificates, anchors, now, progress)  # (2) key
    progress.checked.append("key")
    verify_microproof_signature(smp, key)  # (3) signature
    progress.checked.append("signature")
    progress.source_gaps = smp.proof.source_gaps
    progress.reset = smp.proof.reset
    _check_reading_in_window(receipt, smp)  # (4) reading
    progress.checked.append("reading")
    mp = smp.proof
    want = merkle.inclusion_path_length(receipt.leaf_index, mp.count)  # (5) inclusion
    if len(receipt.path) != want:
        raise BrokenLink("inclusion", f"path has {len(receipt.path)} hashes, expected {want}")
    progress.checked.append("inclusion")
    leaf = leaf_hash(encode_leaf(receipt.reading))  # (6) root
    try:
        merkle.verify_inclusion(leaf, receipt.leaf_index, mp.count, receipt.path, mp.root)
    except BrokenLink as err:
        raise BrokenLink("root", f"{err}; the reading or its inclusion path was altered") from err
    progress.checked.append("root")
    if receipt.log_receipt is not None:  # (7) log
        if log_check is not None:
            progress.notes.append(log_check(receipt, smp, anchors))
            progress.checked.append("log")
        elif anchors.hub_keys:
            progress.notes.append(
                check_log(
                    receipt.log_receipt, receipt.checkpoint, receipt.microproof, anchors.hub_keys
                )
            )
            progress.checked.append("log")
        else:
            progress.notes.append("log receipt present but not checked (no hub key pinned)")
    return smp


def _check_reading_in_window(receipt: Receipt, smp: SignedMicroProof) -> None:
    r, mp = receipt.reading, smp.proof
    if not mp.first_seq <= r.seq <= mp.last_seq:
        raise BrokenLink(
            "reading", f"seq {r.seq} is outside the signed window {mp.first_seq}..{mp.last_seq}"
        )
    if receipt.leaf_index != r.seq - mp.first_seq:
        raise BrokenLink(
            "reading",
            f"seq {r.seq} must be leaf {r.seq - mp.first_seq}, receipt says {receipt.leaf_index}",
        )
    if not mp.first_ts_ns <= r.ts_ns <= mp.last_ts_ns:
        raise BrokenLink(
            "reading",
            f"ts_ns {r.ts_ns} is outside the signed window {mp.first_ts_ns}..{mp.last_ts_ns}",
        )
    if mp.stats and isinstance(r.value, float) and not math.isnan(r.value):  # text: no stats
        st = mp.stats.get(r.signal)
        if st is None:
            raise BrokenLink("reading", f"signal {r.signal!r} is not in the signed window")
        if not st.min <= r.value <= st.max:
            raise BrokenLink(
                "reading",
                f"{r.signal} = {r.value!r} is outside the signed range {st.min!r}..{st.max!r}",
            )


def report_receipt(
    receipt: Receipt,
    anchors: TrustAnchors,
    *,
    now: dt.datetime | None = None,
    log_check: LogCheck | None = None,
) -> Verdict:
    """The same checks as ``verify_receipt``, reported as a ``Verdict``."""
    progress = _Progress()
    try:
        verify_receipt(receipt, anchors, now=now, log_check=log_check, progress=progress)
    except BrokenLink as err:
        return _failed(err, err.link, receipt, progress)
    except Noncanonical as err:  # parses, but is not the one encoding the device signed
        return _failed(err, Noncanonical.code, receipt, progress)
    except MalformedInput as err:
        return _failed(err, "format", receipt, progress)
    except AttestationError as err:
        return _failed(err, "unsupported", receipt, progress)
    return Verdict(
        valid=True,
        utid=progress.utid,
        key_kind=progress.key_kind,
        reading=reading_json(receipt.reading),
        checked=tuple(progress.checked),
        notes=tuple(progress.notes),
        source_gaps=progress.source_gaps,
        reset=progress.reset,
    )


def _failed(err: AttestationError, link: str, receipt: Receipt, progress: _Progress) -> Verdict:
    return Verdict(
        valid=False,
        link=link,
        error=str(err),
        hint=err.hint or None,
        utid=progress.utid,
        key_kind=progress.key_kind,
        reading=reading_json(receipt.reading),
        checked=tuple(progress.checked),
        notes=tuple(progress.notes),
        source_gaps=progress.source_gaps,
        reset=progress.reset,
    )


def verify_chain(microproofs: Sequence[bytes], *, start_prev: bytes | None = None) -> None:
    """Consecutive micro-proofs of one device: prev hashes link, seqs run on or gaps say why.

    ``start_prev`` is the hash the first proof must point to (genesis when it is window 0).
    """
    prev_hash = start_prev
    prev: SignedMicroProof | None = None
    for i, data in enumerate(microproofs):
        smp = parse_microproof(data)
        mp = smp.proof
        if prev_hash is None and mp.window == 0:
            prev_hash = GENESIS_PREV
        if prev_hash is not None and mp.prev != prev_hash:
            raise BrokenLink(
                "chain", f"proof {i} (window {mp.window}) prev {mp.prev.hex()} != {prev_hash.hex()}"
            )
        if prev is not None:
            if smp.kid != prev.kid:
                raise BrokenLink("chain", f"proof {i} is from another device")
            if mp.window != prev.proof.window + 1:
                raise BrokenLink("chain", f"window {mp.window} follows window {prev.proof.window}")
            expected = prev.proof.last_seq + 1 if prev.proof.count else prev.proof.first_seq
            covered = expected
            for g in sorted(mp.gaps, key=lambda g: g.first):
                if g.first == covered:
                    covered = g.last + 1
            if mp.count and mp.first_seq != covered:
                raise BrokenLink(
                    "chain",
                    f"window {mp.window} starts at seq {mp.first_seq}, expected {covered}"
                    " (a gap without a gap record)",
                )
        prev_hash = chain_hash(data)
        prev = smp
