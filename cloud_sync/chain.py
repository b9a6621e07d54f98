"""The hub's ingest rules, pure: a proof's bytes and a device's values in, a decision out.

The shape of python-tuf's ``TrustedMetadataSet``: no database, cache, clock or lock here.
The shell (``cloud_sync/ingest.py``) reads the device row and its chain head, applies these
rules, and writes what they allow in one transaction. Each rule raises a ``Refusal`` whose
``code`` is stable (docs/protocol.md); the upload route maps codes to HTTP statuses.

Rules, numbered as docs/protocol.md numbers the steps of an upload:
(1) ``parse``: the COSE micro-proof and its payload, in their one canonical form
(2) ``same_window``: a proof of a window already accepted is that window again (a duplicate)
    when its payload is the stored proof's; the shell answers identical bytes before (3)
(3) ``admit``: enrolled, not revoked, a key kind the policy allows, the token's device
(4) ``check_signature``: the signature holds under the enrolled key
(5), (6) ``advance``: the next window, chained on the head (prev = SHA-256 of the head's
    COSE bytes), its first seq following the head's last or a gap record covering the hole;
    returns the new head
(7) ``check_leaves``: count within the limit, each leaf strict, seqs consecutive, the
    RFC 9162 root the proof signs (attestation.leafbatch: in C when built; ADR 0007, 0008)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from attestation import errors as attestation_errors
from attestation.cose import PublicKey, decode_sign1
from attestation.errors import AttestationError, BrokenLink, MalformedInput
from attestation.leafbatch import sequence_root
from attestation.microproof import (
    GENESIS_PREV,
    MICROPROOF_LIMITS,
    ProofLimits,
    SignedMicroProof,
    parse_microproof,
    verify_microproof_signature,
)
from cloud_sync.errors import HubError

__all__ = [
    "BadLeaf",
    "BadSignature",
    "Enrollment",
    "Fork",
    "Head",
    "LeafCount",
    "Malformed",
    "Noncanonical",
    "OutOfOrder",
    "Policy",
    "Refusal",
    "RevokedDevice",
    "RootMismatch",
    "SeqGap",
    "SoftwareKeyRefused",
    "TokenRequired",
    "TooLarge",
    "UnknownDevice",
    "WrongDevice",
    "admit",
    "advance",
    "check_leaves",
    "check_signature",
    "parse",
    "same_window",
]


class Refusal(HubError):
    """A proof the rules refuse; ``code`` is what clients match on, ``extra`` goes into the
    answer beside it (``expected_window`` for a chain refusal)."""

    code: ClassVar[str] = "refused"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(f"{self.code}: {detail}")
        self.detail = detail
        self.extra = extra

    def detached(self) -> Refusal:
        """This refusal without the frames it was raised through, to be kept past its
        ``except``. A frame holds its caller's frame, and a caller that keeps the refusal
        (in the checked request, in the writer's outcomes) closes a cycle that only the
        collector frees, with every upload body those frames held (ADR 0050)."""
        self.__traceback__ = None
        self.__cause__ = self.__context__ = None
        return self


class Malformed(Refusal):
    code = "malformed_proof"


class Noncanonical(Refusal):
    """Parses, but is not the one encoding of the proof (ARCHITECTURE.md)."""

    code = attestation_errors.Noncanonical.code


class UnknownDevice(Refusal):
    code = "unknown_device"


class RevokedDevice(Refusal):
    code = "revoked_device"


class SoftwareKeyRefused(Refusal):
    code = "software_key_refused"


class WrongDevice(Refusal):
    code = "wrong_device"


class TokenRequired(Refusal):
    code = "token_required"


class BadSignature(Refusal):
    code = "bad_signature"


class TooLarge(Refusal):
    code = "too_large"


class LeafCount(Refusal):
    code = "leaf_count"


class BadLeaf(Refusal):
    code = "bad_leaf"


class RootMismatch(Refusal):
    code = "root_mismatch"


class Fork(Refusal):
    """A second, different proof of a window already accepted, or a prev that is not the
    head's hash: the device's chain would branch."""

    code = "fork"


class OutOfOrder(Refusal):
    code = "out_of_order"


class SeqGap(Refusal):
    code = "seq_gap"


@dataclass(frozen=True, slots=True)
class Policy:
    """What the hub requires of every proof: its key kind, and what it may hold (the limits
    the agent builds windows to, ADR 0016)."""

    allow_software_keys: bool
    limits: ProofLimits = MICROPROOF_LIMITS


@dataclass(frozen=True, slots=True)
class Head:
    """A device's chain as accepted so far: its last window (-1 before the first), the
    SHA-256 of that window's COSE bytes (None before the first) and its last seq (-1)."""

    window: int
    hash: bytes | None
    last_seq: int


class Enrollment(Protocol):
    """What the rules need to know of an enrolled device (a ``DeviceRow`` has it all)."""

    @property
    def utid(self) -> str: ...
    @property
    def key_kind(self) -> str: ...
    @property
    def revoked(self) -> bool: ...


D = TypeVar("D", bound=Enrollment)


def parse(cose_bytes: bytes, policy: Policy) -> SignedMicroProof:
    """(1) The micro-proof, in its one canonical form, within the policy's limits."""
    try:
        return parse_microproof(cose_bytes, policy.limits)
    except attestation_errors.Noncanonical as err:
        raise Noncanonical(str(err)) from err
    except AttestationError as err:
        raise Malformed(str(err)) from err


def same_window(smp: SignedMicroProof, stored_cose: bytes) -> bool:
    """(2) Whether ``smp`` is the stored proof of its window again: the same payload, signed
    again (ECDSA draws a fresh k, so a device that signs a window twice writes other bytes).
    Identical payloads are the same window, never a fork (ARCHITECTURE.md)."""
    return smp.sign1.payload == decode_sign1(stored_cose).payload


def admit(device: D | None, utid: str, caller: str | None, policy: Policy) -> D:
    """(3) The device when it may upload this proof; ``caller``: the device a bearer token
    proved, None without a token."""
    if device is None:
        raise UnknownDevice(f"{utid} is not enrolled with this hub")
    if device.revoked:
        raise RevokedDevice(f"{utid} was revoked")
    if device.key_kind == "software" and not policy.allow_software_keys:
        raise SoftwareKeyRefused(f"{utid} signs with a software key; policy needs a TPM")
    if caller is not None and caller != device.utid:
        raise WrongDevice(f"the token is for {caller}, not {device.utid}")
    if device.key_kind == "tpm" and caller is None:
        # enrolled devices authenticate (challenge -> token) before uploading
        raise TokenRequired("get a device token: POST /v1/devices/{utid}/token")
    return device


def check_signature(smp: SignedMicroProof, key: PublicKey, key_der: bytes) -> None:
    """(4) The signature holds under the enrolled key (``key_der``: its SubjectPublicKeyInfo,
    the UTID's preimage, so the kid check costs one hash)."""
    try:
        verify_microproof_signature(smp, key, key_der=key_der)
    except BrokenLink as err:
        raise BadSignature(str(err)) from err


def check_leaves(smp: SignedMicroProof, leaves: bytes, policy: Policy) -> None:
    """(7) The leaves, back to back, are the ones the proof signs."""
    mp = smp.proof
    if mp.count > policy.limits.max_leaves:
        raise TooLarge(
            f"window {mp.window} signs {mp.count} readings, limit {policy.limits.max_leaves}"
        )
    try:
        got = sequence_root(leaves, mp.count, mp.first_seq)
    except MalformedInput as err:
        raise (LeafCount if err.field == "leaves" else BadLeaf)(str(err)) from err
    if got != mp.root:
        raise RootMismatch(f"the leaves hash to {got.hex()}, the proof signs {mp.root.hex()}")


def advance(head: Head, smp: SignedMicroProof, digest: bytes) -> Head:
    """(5), (6) The head once ``smp`` (whose COSE bytes hash to ``digest``) is accepted.

    A window at or below the head is a ``Fork`` here; the shell first asks ``same_window``
    of the stored proof, which makes it a duplicate instead when the payload is the same.
    """
    mp = smp.proof
    expected = head.window + 1
    if mp.window < expected:
        raise Fork(
            f"window {mp.window} was already accepted with different bytes",
            expected_window=expected,
        )
    if mp.window > expected:
        raise OutOfOrder(
            f"window {mp.window} arrived before window {expected}", expected_window=expected
        )
    want_prev = GENESIS_PREV if head.hash is None else head.hash
    if mp.prev != want_prev:
        raise Fork(
            f"prev {mp.prev.hex()} is not the hash of window {head.window} ({want_prev.hex()})",
            expected_window=expected,
        )
    if not mp.count:  # a window of gap records only: the seqs stay where they were
        return Head(mp.window, digest, head.last_seq)
    covered = head.last_seq + 1
    for gap in sorted(mp.gaps, key=lambda g: g.first):
        if gap.first <= covered <= gap.last + 1:
            covered = max(covered, gap.last + 1)
    if mp.first_seq != covered:
        raise SeqGap(
            f"window {mp.window} starts at seq {mp.first_seq}, expected {covered};"
            " a hole needs a signed gap record"
        )
    return Head(mp.window, digest, mp.last_seq)
