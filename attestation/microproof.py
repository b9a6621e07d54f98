"""The micro-proof: one signed COSE_Sign1 per window over the window's Merkle root.

Payload keys and types are those of ARCHITECTURE.md ("The proof format"); a decoder
ignores keys it does not know, so new fields take the next free key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cbor2

from attestation import cborsafe, cose
from attestation.errors import BrokenLink, MalformedInput
from attestation.reading import Reading
from attestation.signers.base import ALG_ES256, Signer, TpmClock
from attestation.utid import utid_bytes, utid_text

__all__ = [
    "CONTENT_TYPE",
    "GENESIS_PREV",
    "MICROPROOF_LIMITS",
    "AnomalySummary",
    "DriftTest",
    "Gap",
    "MicroProof",
    "MicroProofLimits",
    "ModelRef",
    "SignalStats",
    "SignedMicroProof",
    "chain_hash",
    "compute_stats",
    "decode_payload",
    "encode_payload",
    "parse_microproof",
    "sign_microproof",
    "verify_microproof_signature",
]

CONTENT_TYPE = "application/vnd.factoryops.microproof+cbor"
GENESIS_PREV = bytes(32)
_CWT_ISS = 1
_CWT_IAT = 6


@dataclass(frozen=True, slots=True)
class MicroProofLimits:
    max_payload_bytes: int = 48 * 1024  # ~200 signals of statistics fit in 16 KiB
    max_signals: int = 1024
    max_gaps: int = 1024
    max_count: int = 1 << 24  # 16 M readings in one window: far beyond any window we build


MICROPROOF_LIMITS = MicroProofLimits()


@dataclass(frozen=True, slots=True)
class ModelRef:
    id: str
    sha256: bytes
    version: str


@dataclass(frozen=True, slots=True)
class AnomalySummary:
    count: int
    max_score: float
    threshold: float


@dataclass(frozen=True, slots=True)
class DriftTest:
    test: str
    statistic: float
    p_value: float
    drifted: bool


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first..last`` (inclusive) that were allocated but never committed, and why."""

    first: int
    last: int
    reason: str


class SignalStats(NamedTuple):
    """Welford running statistics of one signal: count, mean, M2 (sum of squared deviations).

    A named tuple, not a frozen dataclass like the other records here: the hub builds one a
    signal of every proof it parses, and a tuple is built ~3x faster."""

    n: int
    mean: float
    m2: float
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class MicroProof:
    window: int
    first_seq: int
    last_seq: int
    first_ts_ns: int
    last_ts_ns: int
    count: int
    root: bytes
    prev: bytes
    model: ModelRef | None = None
    anomaly: AnomalySummary | None = None
    stats: Mapping[str, SignalStats] = field(default_factory=dict)
    drift: DriftTest | None = None
    tpm_clock: TpmClock | None = None
    gaps: tuple[Gap, ...] = ()
    version: int = 1


def compute_stats(readings: Iterable[Reading]) -> dict[str, SignalStats]:
    """Per-signal count, mean, M2 (sum of squared deviations), min, max; NaN is skipped.

    Two passes per signal over plain lists (builtins do the loops): as exact as Welford's
    running form and several times faster for whole windows.
    """
    by_signal: dict[str, list[float]] = {}
    for r in readings:
        x = r.value
        if x == x:  # noqa: PLR0124 - false only for NaN
            by_signal.setdefault(r.signal, []).append(x)
    out: dict[str, SignalStats] = {}
    for signal in sorted(by_signal):
        xs = by_signal[signal]
        n = len(xs)
        mean = math.fsum(xs) / n
        m2 = math.fsum([(x - mean) * (x - mean) for x in xs])
        out[signal] = SignalStats(n, mean, m2, min(xs), max(xs))
    return out


def encode_payload(mp: MicroProof) -> bytes:
    """Deterministic CBOR of the payload map."""
    obj: dict[int, Any] = {
        1: mp.version,
        2: mp.window,
        3: mp.first_seq,
        4: mp.last_seq,
        5: mp.first_ts_ns,
        6: mp.last_ts_ns,
        7: mp.count,
        8: mp.root,
        9: mp.prev,
        10: None if mp.model is None else {1: mp.model.id, 2: mp.model.sha256, 3: mp.model.version},
    }
    if mp.anomaly is not None:
        obj[11] = {1: mp.anomaly.count, 2: mp.anomaly.max_score, 3: mp.anomaly.threshold}
    if mp.stats:
        obj[12] = {s: [st.n, st.mean, st.m2, st.min, st.max] for s, st in mp.stats.items()}
    if mp.drift is not None:
        d = mp.drift
        obj[13] = {1: d.test, 2: d.statistic, 3: d.p_value, 4: d.drifted}
    if mp.tpm_clock is not None:
        c = mp.tpm_clock
        obj[14] = {1: c.clock, 2: c.reset_count, 3: c.restart_count, 4: c.safe}
    if mp.gaps:
        obj[15] = [[g.first, g.last, g.reason] for g in mp.gaps]
    return cbor2.dumps(obj, canonical=True)


_NUMBER = frozenset({int, float})
_STATS_TYPES = (int, float, float, float, float)


class _Fields:
    """Typed access to an untrusted CBOR map that names the failing key."""

    def __init__(self, obj: Mapping[Any, Any], where: str) -> None:
        self.obj = obj
        self.where = where

    def get(self, key: int, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        value = self.obj.get(key)
        if type(value) is kind:  # the common case, decided without the checks below
            return value
        if value is None:
            if required:
                raise MalformedInput(f"{self.where}[{key}]", "missing")
            return None
        if type(value) is bool and kind is not bool:  # bool: a subclass of int
            raise MalformedInput(f"{self.where}[{key}]", f"expected {kind}, got bool")
        if not isinstance(value, kind):
            raise MalformedInput(f"{self.where}[{key}]", f"expected {kind}, got {type(value)}")
        return value

    def uint(self, key: int) -> int:
        v: int = self.get(key, int)
        if v < 0:
            raise MalformedInput(f"{self.where}[{key}]", f"{v} is negative")
        return v

    def number(self, key: int) -> float:
        return float(self.get(key, (int, float)))

    def hash32(self, key: int) -> bytes:
        v: bytes = self.get(key, bytes)
        if len(v) != 32:
            raise MalformedInput(f"{self.where}[{key}]", f"{len(v)} bytes, expected 32")
        return v

    def sub(self, key: int) -> _Fields | None:
        v = self.get(key, dict, required=False)
        return None if v is None else _Fields(v, f"{self.where}[{key}]")


def decode_payload(data: bytes, limits: MicroProofLimits = MICROPROOF_LIMITS) -> MicroProof:
    """Parse a micro-proof payload strictly, within ``limits``."""
    if len(data) > limits.max_payload_bytes:
        raise MalformedInput("payload", f"{len(data)} bytes, limit {limits.max_payload_bytes}")
    try:
        obj = cborsafe.loads(data)
    except cbor2.CBORDecodeError as err:
        raise MalformedInput("payload", f"not CBOR: {err}") from err
    if not isinstance(obj, dict):
        raise MalformedInput("payload", "expected a map")
    f = _Fields(obj, "payload")
    version = f.uint(1)
    if version != 1:
        raise MalformedInput("payload[1]", f"version {version}, this verifier knows 1")
    first_seq, last_seq, count = f.uint(3), f.uint(4), f.uint(7)
    if count > limits.max_count:
        raise MalformedInput("payload[7]", f"count {count} above limit {limits.max_count}")
    if count and last_seq - first_seq + 1 != count:
        raise MalformedInput(
            "payload[7]", f"count {count} but seqs {first_seq}..{last_seq} span a different number"
        )
    model = None
    if (m := f.sub(10)) is not None:
        model = ModelRef(m.get(1, str), m.hash32(2), str(m.get(3, (str, int))))
    anomaly = None
    if (a := f.sub(11)) is not None:
        anomaly = AnomalySummary(a.uint(1), a.number(2), a.number(3))
    stats: dict[str, SignalStats] = {}
    raw_stats = f.get(12, dict, required=False) or {}
    if len(raw_stats) > limits.max_signals:
        raise MalformedInput("payload[12]", f"{len(raw_stats)} signals, limit {limits.max_signals}")
    for signal, row in raw_stats.items():
        # type() not isinstance(): a bool is an int subclass and must not pass as a number
        ok = type(signal) is str and type(row) is list and len(row) == 5
        if ok and tuple(map(type, row)) == _STATS_TYPES:  # as our encoder writes them
            stats[signal] = SignalStats._make(row)
            continue
        if not ok or not set(map(type, row)) <= _NUMBER:
            raise MalformedInput(f"payload[12][{signal!r}]", "expected [n, mean, M2, min, max]")
        n, mean, m2, low, high = row
        stats[signal] = SignalStats(int(n), float(mean), float(m2), float(low), float(high))
    drift = None
    if (d := f.sub(13)) is not None:
        drift = DriftTest(d.get(1, str), d.number(2), d.number(3), d.get(4, bool))
    clock = None
    if (c := f.sub(14)) is not None:
        clock = TpmClock(c.uint(1), c.uint(2), c.uint(3), c.get(4, bool))
    gaps: list[Gap] = []
    raw_gaps = f.get(15, list, required=False) or []
    if len(raw_gaps) > limits.max_gaps:
        raise MalformedInput("payload[15]", f"{len(raw_gaps)} gaps, limit {limits.max_gaps}")
    for i, g in enumerate(raw_gaps):
        if not (
            isinstance(g, list)
            and len(g) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in g[:2])
            and isinstance(g[2], str)
            and g[0] <= g[1]
        ):
            raise MalformedInput(f"payload[15][{i}]", "expected [first seq, last seq, reason]")
        gaps.append(Gap(g[0], g[1], g[2]))
    return MicroProof(
        window=f.uint(2),
        first_seq=first_seq,
        last_seq=last_seq,
        first_ts_ns=f.get(5, int),
        last_ts_ns=f.get(6, int),
        count=count,
        root=f.hash32(8),
        prev=f.hash32(9),
        model=model,
        anomaly=anomaly,
        stats=stats,
        drift=drift,
        tpm_clock=clock,
        gaps=tuple(gaps),
        version=version,
    )


def sign_microproof(mp: MicroProof, signer: Signer, *, iat: int) -> bytes:
    """COSE_Sign1 bytes of ``mp`` signed by ``signer`` (ES256, kid = UTID)."""
    kid = utid_bytes(signer.public_key_der())
    protected = {
        cose.HDR_KID: kid,
        cose.HDR_CONTENT_TYPE: CONTENT_TYPE,
        cose.HDR_CWT_CLAIMS: {_CWT_ISS: utid_text(kid), _CWT_IAT: iat},
    }
    return cose.sign1(encode_payload(mp), signer, protected=protected)


def chain_hash(cose_bytes: bytes) -> bytes:
    """What the next micro-proof's ``prev`` must hold: SHA-256 of these exact bytes."""
    return hashlib.sha256(cose_bytes).digest()


@dataclass(frozen=True, slots=True)
class SignedMicroProof:
    """A parsed (not yet verified) micro-proof: headers checked, payload decoded."""

    sign1: cose.Sign1
    proof: MicroProof
    kid: bytes
    iat: int

    @property
    def cose_bytes(self) -> bytes:
        return self.sign1.raw

    @property
    def utid(self) -> str:
        return utid_text(self.kid)


def parse_microproof(data: bytes, limits: MicroProofLimits = MICROPROOF_LIMITS) -> SignedMicroProof:
    """Parse and check the headers our format requires (alg, kid, content type, claims)."""
    msg = cose.decode_sign1(data, require_tag=True)
    p = msg.protected
    if p.get(cose.HDR_ALG) != ALG_ES256:
        raise MalformedInput("cose.protected[1]", f"alg {p.get(cose.HDR_ALG)!r}, expected -7")
    kid = p.get(cose.HDR_KID)
    if not isinstance(kid, bytes) or len(kid) != 32:
        raise MalformedInput("cose.protected[4]", "kid must be the 32-byte UTID")
    if p.get(cose.HDR_CONTENT_TYPE) != CONTENT_TYPE:
        raise MalformedInput("cose.protected[3]", f"content type must be {CONTENT_TYPE}")
    claims = p.get(cose.HDR_CWT_CLAIMS)
    if not isinstance(claims, dict) or claims.get(_CWT_ISS) != utid_text(kid):
        raise MalformedInput("cose.protected[15]", "CWT iss must be the UTID text of kid")
    iat = claims.get(_CWT_IAT)
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise MalformedInput("cose.protected[15][6]", "iat must be an integer")
    if msg.payload is None:
        raise MalformedInput("cose.payload", "a micro-proof carries its payload")
    return SignedMicroProof(msg, decode_payload(msg.payload, limits), kid, iat)


def verify_microproof_signature(
    smp: SignedMicroProof, key: cose.PublicKey, *, key_der: bytes | None = None
) -> None:
    """The key must be the one the kid names, and the signature must hold. ``key_der``: the
    DER SubjectPublicKeyInfo ``key`` was loaded from, when the caller holds it (the hub keeps
    each enrolled key's); it saves re-encoding the key a proof. Nothing here can tell whether
    it is ``key``'s: pass only the bytes ``key`` came from."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - cold path

    der = key_der or key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if utid_bytes(der) != smp.kid:
        raise BrokenLink("key", f"kid {smp.kid.hex()} is not the hash of the key given")
    cose.verify_sign1(smp.sign1, key)
