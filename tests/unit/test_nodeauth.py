"""The agent's checks on sensor-node messages, on bytes: forged, truncated, replayed and
unknown-node messages are refused with a stable reason and counted per node (bounded labels);
redeliveries are not attacks; lost seqs are counted; silence becomes source-gap ranges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.connectors.mqtt import MqttConfig, MqttConnector, NodeFleet, node_samples
from agent.connectors.nodeauth import (
    UNKNOWN_NODE_LABEL,
    Instant,
    NodeGate,
    NodeLimits,
    NodeRefused,
    node_tag,
)
from attestation.microproof import SourceGap

KEY = bytes(range(32))
OTHER = bytes(32)
S = 1_000_000_000
T0 = Instant(0, 0)


def at(seconds: int) -> Instant:
    """A time on both clocks, in step (no wall-clock jump)."""
    return Instant(seconds * S, seconds * S)


def wire(node: str = "n1", boot: int = 1, seq: int = 1, key: bytes = KEY, **extra: object) -> bytes:
    doc = {"v": 1, "node": node, "boot": boot, "seq": seq, "ts": 1_796_454_548_910}
    doc["r"] = [["temp", 20.5, "C"]]
    doc.update(extra)
    body = json.dumps(doc).encode()
    return body + b"\n" + node_tag(key, body).hex().encode()


def refused(gate: NodeGate, payload: bytes) -> str:
    with pytest.raises(NodeRefused) as err:
        gate.admit(payload, T0)
    return err.value.reason


def test_a_good_message_becomes_samples_carrying_the_node_boot_and_seq() -> None:
    reading = NodeGate({"n1": KEY}).admit(wire(boot=3, seq=17), T0)
    assert reading is not None
    samples = node_samples(reading, 5)
    assert [(s.signal, s.value, s.unit) for s in samples] == [
        ("n1.temp", 20.5, "C"),
        ("n1:boot", 3.0, ""),
        ("n1:seq", 17.0, ""),
    ]


def test_a_tag_under_another_key_is_refused_as_forged() -> None:
    gate = NodeGate({"n1": KEY})
    assert refused(gate, wire(key=OTHER)) == "bad_tag"
    assert gate.refused == {("n1", "bad_tag"): 1}


def test_a_message_cut_anywhere_is_refused() -> None:
    good = wire()
    gate = NodeGate({"n1": KEY})
    for cut in range(len(good)):
        assert refused(gate, good[:cut]) in {"truncated", "malformed", "bad_tag"}
    assert gate.accepted == {}


def test_replaying_an_older_message_is_refused_but_a_redelivery_is_not_an_attack() -> None:
    gate = NodeGate({"n1": KEY})
    first, second = wire(seq=1), wire(seq=2)
    assert gate.admit(first, T0) is not None
    assert gate.admit(second, T0) is not None
    assert gate.admit(second, T0) is None  # the broker delivered it again (QoS 1)
    assert gate.duplicates == {"n1": 1}
    assert refused(gate, first) == "replay"
    assert gate.refused == {("n1", "replay"): 1}


def test_a_new_boot_restarts_seqs_and_an_old_boot_is_a_replay() -> None:
    gate = NodeGate({"n1": KEY})
    gate.admit(wire(boot=1, seq=9), T0)
    assert gate.admit(wire(boot=2, seq=1), T0) is not None
    assert refused(gate, wire(boot=1, seq=10)) == "replay"


def test_a_signed_message_with_the_same_pair_but_other_values_is_a_replay() -> None:
    gate = NodeGate({"n1": KEY})
    gate.admit(wire(seq=4), T0)
    assert refused(gate, wire(seq=4, r=[["temp", 99.0, "C"]])) == "replay"


def test_made_up_node_ids_share_one_metric_label() -> None:
    gate = NodeGate({"n1": KEY})
    for i in range(50):
        refused(gate, wire(node=f"evil{i}"))
    assert gate.refused == {(UNKNOWN_NODE_LABEL, "unknown_node"): 50}


def test_seqs_the_node_never_delivered_are_counted() -> None:
    gate = NodeGate({"n1": KEY})
    gate.admit(wire(seq=1), T0)
    gate.admit(wire(seq=5), T0)
    gate.admit(wire(boot=2, seq=3), T0)
    assert gate.missing == {"n1": 3 + 2}


def test_an_oversized_or_badly_typed_body_is_refused_by_name() -> None:
    gate = NodeGate({"n1": KEY}, NodeLimits(max_payload_bytes=300))
    assert refused(gate, wire(r=[["temp", 1.0, "C"]] * 20)) == "too_large"
    assert refused(gate, wire(seq=True)) == "malformed"
    assert refused(gate, wire(r=[["t", "hot", "C"]])) == "malformed"
    assert refused(gate, wire(r=[["t", 1.0, "C"], ["t", 2.0, "C"]])) == "malformed"
    assert refused(gate, wire(v=2)) == "malformed"


def test_a_silent_node_becomes_contiguous_gap_ranges_and_closes_when_it_returns() -> None:
    gate = NodeGate({"n1": KEY, "n2": KEY}, NodeLimits(silence_ms=10_000), started=T0)
    gate.admit(wire("n1", seq=1), at(1))
    gate.admit(wire("n2", seq=1, key=KEY), at(1))
    assert gate.gaps(at(5)) == []
    gate.admit(wire("n2", seq=2), at(9))
    gate.admit(wire("n2", seq=3), at(18))
    assert gate.gaps(at(20)) == [SourceGap("n1", 1 * S, 20 * S, "timeout")]
    assert gate.silent(at(20)) == ["n1"]
    gate.admit(wire("n1", seq=2), at(26))  # back
    assert gate.gaps(at(27)) == [SourceGap("n1", 20 * S, 26 * S, "timeout")]
    assert gate.silent(at(27)) == []


def test_replay_state_survives_a_restart() -> None:
    gate = NodeGate({"n1": KEY})
    gate.admit(wire(seq=7), T0)
    again = NodeGate({"n1": KEY})
    again.restore(json.loads(json.dumps(gate.replay_state())))
    assert refused(again, wire(seq=7)) == "replay"


@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_refused_with_a_reason_never_an_exception(data: bytes) -> None:
    gate = NodeGate({"n1": KEY})
    with pytest.raises(NodeRefused):
        gate.admit(data, T0)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_of_a_good_message_is_refused(index: int, bit: int) -> None:
    good = bytearray(wire())
    good[index % len(good)] ^= 1 << bit
    with pytest.raises(NodeRefused):
        NodeGate({"n1": KEY}).admit(bytes(good), T0)


class _Clocks:
    """The connector's two clocks, set by the test: the wall clock and the monotonic one."""

    def __init__(self, wall_ns: int) -> None:
        self.wall_ns, self.mono_ns = wall_ns, 0

    def step(self, seconds: float, *, wall_jump_s: float = 0.0) -> None:
        self.mono_ns += int(seconds * S)
        self.wall_ns += int((seconds + wall_jump_s) * S)


def _node_connector(tmp_path: Path, clocks: _Clocks) -> MqttConnector:
    fleet = NodeFleet("nodes/+", tmp_path, NodeLimits(silence_ms=3_000))
    cfg = MqttConfig("nodes", "127.0.0.1", 1883, "gw", 1, "node-v1", 4096, (), nodes=fleet)
    conn = MqttConnector(cfg, clock=lambda: clocks.wall_ns, ticks=lambda: clocks.mono_ns)
    conn.node_gate = NodeGate({"n1": KEY}, fleet.limits, conn.now())
    return conn


def test_a_wall_clock_jump_ahead_is_no_silence_but_a_quiet_node_still_is(
    tmp_path: Path,
) -> None:
    clocks = _Clocks(wall_ns=1_796_454_548 * S)
    conn = _node_connector(tmp_path, clocks)
    samples, _ = conn._take("nodes/n1", wire(seq=1))
    assert samples
    clocks.step(1, wall_jump_s=120)  # an NTP step two minutes ahead, one second on
    assert conn.silences() == []
    conn._take("nodes/n1", wire(seq=2))
    clocks.step(1, wall_jump_s=-120)  # and back
    assert conn.silences() == []
    clocks.step(4)  # now quiet for 5 s since seq 2 by the monotonic clock: past silence_s
    # stated as those 5 s up to the wall clock's now (seq 2 came in during the jump)
    now = clocks.wall_ns
    assert conn.silences() == [SourceGap("n1", now - 5 * S, now, "timeout")]


def test_a_silence_across_a_wall_step_back_is_stated_at_once_with_its_true_length() -> None:
    gate = NodeGate({"n1": KEY}, NodeLimits(silence_ms=3_000), started=at(1000))
    gate.admit(wire(seq=1), at(1000))
    assert gate.gaps(at(1005)) == [SourceGap("n1", 1000 * S, 1005 * S, "timeout")]
    # the wall clock steps 2 minutes back; the next second of silence is stated at once
    back = Instant(886 * S, 1006 * S)
    assert gate.gaps(back) == [SourceGap("n1", 885 * S, 886 * S, "timeout")]
    gate.admit(wire(seq=2), Instant(887 * S, 1007 * S))  # back: the last piece closes
    assert gate.gaps(Instant(888 * S, 1008 * S)) == [SourceGap("n1", 886 * S, 887 * S, "timeout")]
    assert gate.silent(Instant(888 * S, 1008 * S)) == []
