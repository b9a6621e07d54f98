"""Sensor-node readings (firmware/, wire form ``node-v1``): parse, verify the tag, refuse replays,
and notice silent nodes. Pure: bytes and times in, values or refusals out; no socket, no file.

The wire form a node publishes (docs/firmware.md) is the JSON body, one newline, and the
lowercase hex HMAC-SHA256 of the body under the node's 32-byte key:

    {"v": 1, "node": "n1", "boot": 3, "seq": 17, "ts": 1796454548910,
     "r": [["temp", 20.94, "C"]], "e": [["flow", "uart: no line"]]}\\n<64 hex>

``NodeGate.admit`` runs the checks in order and raises ``NodeRefused`` with a stable
``reason`` at the first that fails; every refusal is counted per node (unknown nodes share
one label, so a flood of made-up ids cannot grow the metrics).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError
from attestation.microproof import SourceGap

__all__ = [
    "KEY_BYTES",
    "REFUSAL_REASONS",
    "UNKNOWN_NODE_LABEL",
    "Instant",
    "NodeGate",
    "NodeLimits",
    "NodeReading",
    "NodeRefused",
    "node_tag",
    "valid_node_id",
]

KEY_BYTES = 32  # HMAC-SHA256 key: one SHA-256 block's worth of entropy is plenty (RFC 2104 §3)
TAG_HEX = 64
WIRE_VERSION = 1
UNKNOWN_NODE_LABEL = "<unknown>"
REFUSAL_REASONS = ("too_large", "truncated", "malformed", "unknown_node", "bad_tag", "replay")
# source-gap reasons (the closed set of attestation.microproof.SOURCE_GAP_REASONS)
SILENT = "timeout"  # a node that published nothing for silence_ms
SENSOR_ERROR = "refused"  # a sensor the node said it could not read (its "e" list)
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
_SENSOR = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")
_TAG = re.compile(rb"[0-9a-f]{64}\Z")


def valid_node_id(node: str) -> bool:
    """Node ids name files and metric labels: letters, digits, '_' and '-', at most 32."""
    return bool(_NODE_ID.match(node))


def node_tag(key: bytes, body: bytes) -> bytes:
    """The tag a node appends (firmware/hmac256.py computes the same bytes)."""
    return hmac.new(key, body, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Instant:
    """One "now", both clocks read together: ``wall_ns`` (Unix ns) is what a source gap
    states, ``mono_ns`` (monotonic ns) what a silence is measured on, so a wall-clock step
    (NTP, a bad RTC; the ``clock_jump`` rig fault) neither makes a node silent nor hides one."""

    wall_ns: int
    mono_ns: int


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """What one node message may hold; past these it is refused, by name."""

    # a reading of 3 sensors is ~200 bytes and a node's ring slot 256; 16x headroom
    max_payload_bytes: int = 4096
    max_values: int = 32  # sensors in one reading
    # node clocks are NTP-set; a stamp further than this from ours is taken as ours
    max_clock_skew_ms: int = 24 * 3600 * 1000
    silence_ms: int = 30_000  # no message for this long: the node is a source gap


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One verified node message: who, which (boot, seq), when, and the values."""

    node: str
    boot: int
    seq: int
    ts_ms: int
    values: tuple[tuple[str, float, str], ...]  # (sensor, value, unit)
    errors: tuple[tuple[str, str], ...]  # (sensor, what the node said went wrong)


class NodeRefused(AgentError):
    """A node message that fails a check; ``reason`` is one of ``REFUSAL_REASONS``."""

    def __init__(self, reason: str, node: str, message: str) -> None:
        super().__init__(
            f"node {node}: {reason}: {message}",
            hint="a forged or replayed message, or a node whose key differs from the agent's: "
            "provision the node again (factoryops provision node)",
        )
        self.reason = reason
        self.node = node


def _int_field(doc: dict[str, Any], key: str, lo: int, hi: int, node: str) -> int:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise NodeRefused("malformed", node, f"{key}: expected an integer in {lo}..{hi}")
    return v


def _values(raw: Any, node: str, limits: NodeLimits) -> tuple[tuple[str, float, str], ...]:
    if not isinstance(raw, list) or len(raw) > limits.max_values:
        raise NodeRefused("malformed", node, f"r: expected a list of at most {limits.max_values}")
    out: list[tuple[str, float, str]] = []
    for i, item in enumerate(raw):
        ok = isinstance(item, list) and len(item) == 3
        name, value, unit = item if ok else (None, None, None)
        if not (
            isinstance(name, str)
            and _SENSOR.match(name)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and isinstance(unit, str)
            and len(unit) <= 16
        ):
            raise NodeRefused("malformed", node, f"r[{i}]: expected [sensor, finite number, unit]")
        out.append((name, float(value), unit))
    if len({n for n, _, _ in out}) != len(out):
        raise NodeRefused("malformed", node, "r: a sensor appears twice")
    return tuple(out)


def _errors(raw: Any, node: str, limits: NodeLimits) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > limits.max_values:
        raise NodeRefused("malformed", node, "e: expected a list of [sensor, text]")
    out = []
    for i, item in enumerate(raw):
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and _SENSOR.match(item[0])
            and isinstance(item[1], str)
        ):
            raise NodeRefused("malformed", node, f"e[{i}]: expected [sensor, text]")
        out.append((item[0], item[1][:64]))
    return tuple(out)


def parse_and_verify(payload: bytes, keys: dict[str, bytes], limits: NodeLimits) -> NodeReading:
    """The checks, in order; the first that fails raises ``NodeRefused``.

    (1) size  (2) framing: body, newline, 64 hex digits  (3) JSON object naming a node
    (4) the node is registered  (5) the tag, compared in constant time  (6) the fields.
    The tag is checked before the fields, so nothing unauthenticated is interpreted
    beyond the node id that picks the key.
    """
    # (1) size
    if len(payload) > limits.max_payload_bytes:
        raise NodeRefused("too_large", UNKNOWN_NODE_LABEL, f"{len(payload)} bytes")
    # (2) framing
    body, sep, tag_hex = payload.rpartition(b"\n")
    # lowercase only: with 'A'-'F' accepted too, one message would have 2**n valid spellings
    if not sep or not _TAG.match(tag_hex):
        raise NodeRefused("truncated", UNKNOWN_NODE_LABEL, "no 64 lowercase hex digits at the end")
    tag = bytes.fromhex(tag_hex.decode("ascii"))
    # (3) a JSON object naming a node
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise NodeRefused("malformed", UNKNOWN_NODE_LABEL, "the body is not JSON") from None
    node = doc.get("node") if isinstance(doc, dict) else None
    if not isinstance(node, str) or not valid_node_id(node):
        raise NodeRefused("malformed", UNKNOWN_NODE_LABEL, "node: missing or not a node id")
    # (4) registered
    key = keys.get(node)
    if key is None:
        raise NodeRefused("unknown_node", node, "no key registered for this node")
    # (5) the tag
    if not hmac.compare_digest(node_tag(key, body), tag):
        raise NodeRefused("bad_tag", node, "the tag does not match the body under the node key")
    # (6) the fields
    if doc.get("v") != WIRE_VERSION:
        raise NodeRefused("malformed", node, f"v: expected {WIRE_VERSION}")
    return NodeReading(
        node=node,
        boot=_int_field(doc, "boot", 1, 2**32 - 1, node),
        seq=_int_field(doc, "seq", 1, 2**53, node),
        ts_ms=_int_field(doc, "ts", 0, 2**53, node),
        values=_values(doc.get("r"), node, limits),
        errors=_errors(doc.get("e"), node, limits),
    )


@dataclass
class NodeGate:
    """The connector's verifier for a fleet of nodes: keys, last (boot, seq) per node,
    refusal counts, readings a node never delivered, and silence.

    State is plain values so a unit test drives it with bytes and times; ``replay_state``
    and ``restore`` let the adapter keep the last (boot, seq) across agent restarts.
    """

    keys: dict[str, bytes]
    limits: NodeLimits = field(default_factory=NodeLimits)
    started: Instant = Instant(0, 0)  # a node never heard from is silent from here
    last: dict[str, tuple[int, int]] = field(default_factory=dict)
    last_tag: dict[str, bytes] = field(default_factory=dict)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)  # (node label, reason)
    duplicates: dict[str, int] = field(default_factory=dict)  # benign QoS 1 redeliveries
    missing: dict[str, int] = field(default_factory=dict)  # seqs a node never delivered
    accepted: dict[str, int] = field(default_factory=dict)
    # monotonic: when each node was last heard, and the end of its silence stated last
    _seen_ns: dict[str, int] = field(default_factory=dict)
    _reported_ns: dict[str, int] = field(default_factory=dict)
    _closed: list[SourceGap] = field(default_factory=list)

    def admit(self, payload: bytes, now: Instant) -> NodeReading | None:
        """The verified reading, or None for a repeat of the last one (a QoS 1 redelivery);
        raises ``NodeRefused`` (counted) for anything forged, replayed or malformed."""
        try:
            reading = parse_and_verify(payload, self.keys, self.limits)
            tag = payload[-TAG_HEX:]
            prev = self.last.get(reading.node)
            here = (reading.boot, reading.seq)
            if prev is not None and here <= prev:
                if here == prev and self.last_tag.get(reading.node) == tag:
                    self.duplicates[reading.node] = self.duplicates.get(reading.node, 0) + 1
                    return None
                raise NodeRefused(
                    "replay", reading.node, f"(boot, seq) {here} is not after the last {prev}"
                )
        except NodeRefused as err:
            label = err.node if err.node in self.keys else UNKNOWN_NODE_LABEL
            self.refused[label, err.reason] = self.refused.get((label, err.reason), 0) + 1
            raise
        node = reading.node
        # seqs restart at 1 each boot: a jump within a boot (or a first seq past 1 in a new
        # boot we follow) is readings the node's ring dropped or never sent
        expected = 1 if prev is None or prev[0] != reading.boot else prev[1] + 1
        if prev is not None and reading.seq > expected:
            self.missing[node] = self.missing.get(node, 0) + reading.seq - expected
        self.last[node] = here
        self.last_tag[node] = tag
        self.accepted[node] = self.accepted.get(node, 0) + 1
        self._back(node, now)
        return reading

    def reading_ts_ns(self, reading: NodeReading, now_ns: int) -> int:
        """The node's own time when it is plausible, else ours (a node without NTP)."""
        ts_ns = reading.ts_ms * 1_000_000
        if abs(ts_ns - now_ns) <= self.limits.max_clock_skew_ms * 1_000_000:
            return ts_ns
        return now_ns

    def _silence(self, node: str, now: Instant) -> SourceGap | None:
        """The stretch of ``node``'s silence not yet stated, if it has been silent for longer
        than ``silence_ms``. Both are measured on the monotonic clock and the stretch is
        stated as the same length up to the wall clock's now: a wall step during a silence
        moves the range as it moves every stamp, but never lengthens, shortens or inverts it."""
        seen = self._seen_ns.get(node, self.started.mono_ns)
        if now.mono_ns - seen <= self.limits.silence_ms * 1_000_000:
            return None
        since = max(seen, self._reported_ns.get(node, seen))
        return SourceGap(node, now.wall_ns - (now.mono_ns - since), now.wall_ns, SILENT)

    def _back(self, node: str, now: Instant) -> None:
        if (gap := self._silence(node, now)) is not None:
            self._closed.append(gap)
        self._seen_ns[node] = now.mono_ns
        self._reported_ns.pop(node, None)

    def gaps(self, now: Instant) -> list[SourceGap]:
        """Silences to record since the last call: ranges of nodes that came back, and the
        stretch since the last report of every node still silent (contiguous pieces, so a
        window never claims a time another window claimed)."""
        out, self._closed = self._closed, []
        for node in sorted(self.keys):
            gap = self._silence(node, now)
            if gap is not None and gap.last_ts_ns > gap.first_ts_ns:
                out.append(gap)
                self._reported_ns[node] = now.mono_ns
        return out

    def silent(self, now: Instant) -> list[str]:
        """Registered nodes not heard from for longer than ``silence_ms`` (monotonic)."""
        return [n for n in sorted(self.keys) if self._silence(n, now) is not None]

    def replay_state(self) -> dict[str, list[int]]:
        return {n: [b, s] for n, (b, s) in sorted(self.last.items())}

    def restore(self, state: dict[str, list[int]]) -> None:
        for node, pair in state.items():
            if node in self.keys and len(pair) == 2:
                self.last[node] = (int(pair[0]), int(pair[1]))
