"""The micro-proof: one signed COSE_Sign1 per window over the window's Merkle root.

Payload keys and types are those of ARCHITECTURE.md ("The proof format"); a decoder
ignores keys it does not know, so new fields take the next free key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import cbor2

from attestation import cborsafe, cose
from attestation.errors import BrokenLink, MalformedInput, Noncanonical
from attestation.native import EXTENSION
from attestation.reading import LEAF_LIMITS, Reading
from attestation.signers.base import ALG_ES256, Signer, TpmClock
from attestation.utid import utid_bytes, utid_text

__all__ = [
    "CONTENT_TYPE",
    "GENESIS_PREV",
    "MICROPROOF_LIMITS",
    "SOURCE_GAP_REASONS",
    "AnomalySummary",
    "DriftTest",
    "Gap",
    "MicroProof",
    "ModelRef",
    "ProofLimits",
    "RecoveryRecord",
    "ResetRecord",
    "SignalStats",
    "SignedMicroProof",
    "SourceGap",
    "chain_hash",
    "compute_stats",
    "decode_payload",
    "encode_payload",
    "is_source_gap_reason",
    "parse_microproof",
    "sign_microproof",
    "verify_microproof_signature",
]

CONTENT_TYPE = "application/vnd.factoryops.microproof+cbor"
GENESIS_PREV = bytes(32)
_CWT_ISS = 1
_CWT_IAT = 6


@dataclass(frozen=True, slots=True)
class ProofLimits:
    """What one micro-proof may hold: the one definition the agent builds to and the hub
    (and ``factoryops verify``) parses against, so a window the agent signs is never one the
    hub refuses (ADR 0016). The agent cuts windows by ``max_signals``, ``max_stats_bytes``
    and ``max_leaves``; it states at most ``max_source_gaps`` / ``max_source_gap_bytes`` of
    source gaps a window and carries the rest to the next one."""

    max_payload_bytes: int = 256 * 1024  # the sum of the budgets below plus ~2 KiB of fields
    max_signals: int = 1024  # statistics (key 12) for at most this many signals a window
    max_stats_bytes: int = 160 * 1024  # key 12's bytes: 1,024 names of ~100 bytes fit
    max_gaps: int = 1024
    max_source_gaps: int = 512
    max_source_gap_bytes: int = 32 * 1024  # key 16's bytes
    max_count: int = 1 << 24  # 16 M readings in one window: far beyond any window we build
    max_leaves: int = 65_536  # leaves a proof may sign (uploaded in one request with it)


MICROPROOF_LIMITS = ProofLimits()

# Why a source was silent (ARCHITECTURE.md, key 16); ``exception:N`` carries the Modbus code.
SOURCE_GAP_REASONS = frozenset({"timeout", "refused", "bad_node", "disconnected"})
MAX_SOURCE_GAP_REASON_CHARS = 32


@dataclass(frozen=True, slots=True)
class ModelRef:
    id: str
    sha256: bytes
    version: str
    fleet_version: int | None = None  # the TUF-published fleet model's version (key 4)
    job: int | None = None  # the hub job that produced it (key 5)


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


@dataclass(frozen=True, slots=True)
class SourceGap:
    """A source (device, connection, subscription, node or tag, by name) that should have
    produced readings from ``first_ts_ns`` to ``last_ts_ns`` (inclusive) and did not."""

    source: str
    first_ts_ns: int
    last_ts_ns: int
    reason: str

    def encoded_size(self) -> int:
        """Upper bound of its bytes in key 16 (the agent's budget; never an undercount)."""
        return len(self.source.encode()) + len(self.reason) + 1 + 2 * 3 + 2 * 9


def is_source_gap_reason(reason: str) -> bool:
    """``timeout``, ``refused``, ``bad_node``, ``disconnected`` or ``exception:N`` (N 1..255)."""
    if reason in SOURCE_GAP_REASONS:
        return True
    kind, _, code = reason.partition(":")
    return kind == "exception" and code.isdigit() and code[0] != "0" and int(code) <= 255


@dataclass(frozen=True, slots=True)
class RecoveryRecord:
    """Payload key 17: this window is the first sealed after a start that found the agent's
    journal unfinished (a crash, a kill -9, a power cut: ADR 0017).

    ``recovered``: the window's readings up to ``last_journaled`` came back from the journal
    (False: the journal held none, every reading here is new). ``recoveries``: such starts of
    this device's spool so far, this one included; a jump means a recovery was itself cut
    short. ``last_journaled``: the last seq durable before the stop (None: none ever was);
    seqs after it that were handed out and lost are stated by a gap record (key 15).
    """

    recovered: bool
    recoveries: int
    last_journaled: int | None


@dataclass(frozen=True, slots=True)
class ResetRecord:
    """Payload key 18: this window restarts the device's chain from the hub's head because
    the agent's spool was lost, corrupt or forked (ADR 0027).

    ``reason``: why (``spool_lost``, ``spool_forked``). ``hub_window``/``hub_last_seq``: the
    hub's head the agent continued from. Readings the old spool held after that head never
    reached the hub and are lost: this record states so, signed, on the first new window.
    """

    reason: str
    hub_window: int
    hub_last_seq: int


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
    source_gaps: tuple[SourceGap, ...] = ()
    version: int = 1
    recovery: RecoveryRecord | None = None
    reset: ResetRecord | None = None


def compute_stats(readings: Iterable[Reading]) -> dict[str, SignalStats]:
    """Per-signal count, mean, M2 (sum of squared deviations), min, max; NaN and text are
    skipped (a signal with only text values has no statistics).

    Two passes per signal over plain lists (builtins do the loops): as exact as Welford's
    running form and several times faster for whole windows. A window that reads each
    signal once (a big gateway's, ADR 0033) takes ``_stats_once`` instead.
    """
    rs = readings if isinstance(readings, (list, tuple)) else list(readings)
    once = _stats_once(rs)
    if once is not None:
        return once
    by_signal: dict[str, list[float]] = {}
    for r in rs:
        x = r.value
        if x == x and type(x) is float:  # noqa: PLR0124 - false for NaN (and for text)
            xs = by_signal.get(r.signal)
            if xs is None:
                by_signal[r.signal] = [x]
            else:
                xs.append(x)
    out: dict[str, SignalStats] = {}
    for signal in sorted(by_signal):
        xs = by_signal[signal]
        n = len(xs)
        if n == 1:
            out[signal] = _one(xs[0])
            continue
        mean = _mean(xs)
        out[signal] = _new_tuple(SignalStats, (n, mean, _m2(xs, mean), min(xs), max(xs)))
    return out


_new_tuple = tuple.__new__  # a named tuple built from a plain one without a Python frame


def _one(x: float) -> SignalStats:
    """What the two passes give for one value, without them: fsum turns -0.0 into 0.0 (so
    does ``+ 0.0``), and an infinite value has a NaN M2, as inf - inf is."""
    d = x - x
    return _new_tuple(SignalStats, (1, x + 0.0, d * d + 0.0, x, x))


def _stats_once(rs: Sequence[Reading]) -> dict[str, SignalStats] | None:
    """``compute_stats`` of a window whose signals are each read once, with no text or NaN
    value (None for any other): no list a signal, sorted once. The same values as the
    general path's single-value case (a property test compares the two)."""
    by_signal = {r.signal: r.value for r in rs}
    if len(by_signal) != len(rs):
        return None  # a signal read twice or more
    if not all(type(x) is float and x == x for x in by_signal.values()):  # noqa: PLR0124 - NaN test
        return None
    floats = cast("dict[str, float]", by_signal)  # every value is a float: checked above
    return {s: _one(floats[s]) for s in sorted(floats)}


def _mean(xs: list[float]) -> float:
    """The exact mean; a sensor that sends +inf and -inf in one window has none (NaN), and
    finite values whose sum overflows are averaged scaled first (fsum raises on both)."""
    try:
        return math.fsum(xs) / len(xs)
    except ValueError:  # -inf + inf
        return math.nan
    except OverflowError:  # e.g. 1e308 + 1e308: the mean itself is finite
        return math.fsum([x / len(xs) for x in xs])


def _m2(xs: list[float], mean: float) -> float:
    """The sum of squared deviations; +inf where the exact sum is past the largest float
    (fsum raises on that: e.g. -1e154 and 1e154 in one window, which once stopped sealing)."""
    try:
        return math.fsum([(x - mean) * (x - mean) for x in xs])
    except OverflowError:  # finite squares whose exact sum overflows: the value is +inf
        return math.inf


def _model_map(m: ModelRef) -> dict[int, Any]:
    out: dict[int, Any] = {1: m.id, 2: m.sha256, 3: m.version}
    if m.fleet_version is not None:
        out[4] = m.fleet_version
    if m.job is not None:
        out[5] = m.job
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
        10: None if mp.model is None else _model_map(mp.model),
    }
    if mp.anomaly is not None:
        obj[11] = {1: mp.anomaly.count, 2: mp.anomaly.max_score, 3: mp.anomaly.threshold}
    stats = _native_stats(mp.stats) if mp.stats else None
    if mp.stats and stats is None:
        # as plain tuples in field order, [n, mean, m2, min, max] (cbor2 writes a tuple as
        # an array, and a plain one ~20 % faster than a named one or a list built field by field)
        obj[12] = dict(zip(mp.stats, map(tuple, mp.stats.values()), strict=True))
    if mp.drift is not None:
        d = mp.drift
        obj[13] = {1: d.test, 2: d.statistic, 3: d.p_value, 4: d.drifted}
    if mp.tpm_clock is not None:
        c = mp.tpm_clock
        obj[14] = {1: c.clock, 2: c.reset_count, 3: c.restart_count, 4: c.safe}
    if mp.gaps:
        obj[15] = [[g.first, g.last, g.reason] for g in mp.gaps]
    if mp.source_gaps:
        obj[16] = [[g.source, g.first_ts_ns, g.last_ts_ns, g.reason] for g in mp.source_gaps]
    if (rec := mp.recovery) is not None:
        obj[17] = {1: rec.recovered, 2: rec.recoveries}
        if rec.last_journaled is not None:
            obj[17][3] = rec.last_journaled
    if (rs := mp.reset) is not None:
        obj[18] = {1: rs.reason, 2: rs.hub_window, 3: rs.hub_last_seq}
    if stats is None:
        return cborsafe.dumps(obj)
    return _with_key_12(obj, stats)


def _native_stats(stats: Mapping[str, SignalStats]) -> bytes | None:
    """Key 12's value as ``cborsafe.dumps`` writes it, by the native extension (~0.08 us a
    signal against cbor2's ~0.8); None without the extension or where Python must decide
    (a binary16 subnormal or -0.0: see ``stats_map`` in leafcheck.c). A property test
    holds it to cbor2's pure-Python encoder."""
    if EXTENSION is None:
        return None
    got: bytes | None = EXTENSION.stats_map(stats if type(stats) is dict else dict(stats))
    return got


def _with_key_12(obj: dict[int, Any], stats: bytes) -> bytes:
    """The canonical payload map with ``stats`` (encoded) as key 12: the keys are the small
    integers 1..18, one byte each and in numeric order, so the map is the entries below 12,
    key 12, then those above it, under a one-byte head (fewer than 24 entries)."""
    below = cborsafe.dumps({k: v for k, v in obj.items() if k < 12})
    above = cborsafe.dumps({k: v for k, v in obj.items() if k > 12})
    entries = len(obj) + 1
    return b"".join((bytes((0xA0 | entries,)), below[1:], b"\x0c", stats, above[1:]))


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


def decode_payload(data: bytes, limits: ProofLimits = MICROPROOF_LIMITS) -> MicroProof:  # noqa: PLR0912, PLR0915 - one strict check per payload key (1-17), in key order
    """Parse a micro-proof payload strictly, within ``limits``; it must be deterministic
    CBOR (``Noncanonical`` otherwise)."""
    if len(data) > limits.max_payload_bytes:
        raise MalformedInput("payload", f"{len(data)} bytes, limit {limits.max_payload_bytes}")
    try:
        obj, deterministic = cborsafe.loads_checked(data)
    except cborsafe.TrailingBytes as err:
        raise Noncanonical("payload", f"{err.extra} byte(s) after the map") from err
    except cbor2.CBORDecodeError as err:
        raise MalformedInput("payload", f"not CBOR: {err}") from err
    if not isinstance(obj, dict):
        raise MalformedInput("payload", "expected a map")
    if not deterministic:  # the one encoding (ARCHITECTURE.md), what encode_payload writes
        raise Noncanonical("payload", "not deterministic CBOR (RFC 8949 §4.2.1)")
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
        model = ModelRef(
            m.get(1, str),
            m.hash32(2),
            str(m.get(3, (str, int))),
            m.uint(4) if m.obj.get(4) is not None else None,
            m.uint(5) if m.obj.get(5) is not None else None,
        )
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
    source_gaps = _source_gaps(f.get(16, list, required=False) or [], limits)
    recovery = None
    if (r := f.sub(17)) is not None:
        last_journaled = r.uint(3) if r.obj.get(3) is not None else None
        recovery = RecoveryRecord(r.get(1, bool), r.uint(2), last_journaled)
    reset = None
    if (rs := f.sub(18)) is not None:
        reset = ResetRecord(rs.get(1, str), rs.uint(2), rs.uint(3))
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
        source_gaps=source_gaps,
        version=version,
        recovery=recovery,
        reset=reset,
    )


def _source_gaps(raw: list[Any], limits: ProofLimits) -> tuple[SourceGap, ...]:
    """Key 16: ``[[source, first ts_ns, last ts_ns, reason], ...]``, each checked by name."""
    if len(raw) > limits.max_source_gaps:
        raise MalformedInput(
            "payload[16]", f"{len(raw)} source gaps, limit {limits.max_source_gaps}"
        )
    out = []
    for i, g in enumerate(raw):
        if not (
            type(g) is list
            and len(g) == 4
            and type(g[0]) is str
            and 0 < len(g[0]) <= LEAF_LIMITS.max_signal_chars
            and type(g[1]) is int
            and type(g[2]) is int
            and -(2**63) <= g[1] <= g[2] < 2**63
            and type(g[3]) is str
        ):
            raise MalformedInput(
                f"payload[16][{i}]", "expected [source, first ts_ns <= last ts_ns, reason]"
            )
        if not is_source_gap_reason(g[3]):
            raise MalformedInput(
                f"payload[16][{i}][3]",
                f"reason {g[3][:MAX_SOURCE_GAP_REASON_CHARS]!r} is not one of"
                f" {', '.join(sorted(SOURCE_GAP_REASONS))} or exception:N",
            )
        out.append(SourceGap(g[0], g[1], g[2], g[3]))
    return tuple(out)


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


def parse_microproof(
    data: bytes, limits: ProofLimits = MICROPROOF_LIMITS, *, canonical: bool = True
) -> SignedMicroProof:
    """Parse and check the headers our format requires (alg, kid, content type, claims) and
    its one canonical form (``Noncanonical``: ``cose.require_canonical``, and the payload's
    in ``decode_payload``). ``canonical=False`` is only for bytes already accepted and
    stored (views of a hub log that holds proofs from before the canonical rule, whose
    s may be high); never for bytes from outside."""
    msg = cose.decode_sign1(data, require_tag=not canonical)
    if canonical:
        cose.require_canonical(msg)
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
