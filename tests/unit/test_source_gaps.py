"""Source gaps (payload key 16): the window states each silent source once, with its range,
and the micro-proof carries them in one canonical form within the shared proof limits."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.connectors.base import Sample
from agent.connectors.common import SourceWatch
from agent.window import ClosedWindow, WindowBuilder, merge_windows, runs, stats_cost
from attestation import MalformedInput, cborsafe
from attestation.microproof import (
    MICROPROOF_LIMITS,
    MicroProof,
    ProofLimits,
    SourceGap,
    decode_payload,
    encode_payload,
)
from attestation.reading import Reading

S = 1_000_000_000  # one second in ns


def _proof(source_gaps: tuple[SourceGap, ...]) -> MicroProof:
    return MicroProof(
        window=0,
        first_seq=0,
        last_seq=0,
        first_ts_ns=0,
        last_ts_ns=0,
        count=1,
        root=bytes(32),
        prev=bytes(32),
        source_gaps=source_gaps,
    )


def _ended(watch: SourceWatch, source: str, now: int) -> SourceGap:
    gap = watch.ended(source, now)
    assert gap is not None
    return gap


def _sample(signal: str, ts: int, value: float | str = 1.0) -> Sample:
    return Sample(signal, value, "", ts)


source_gaps = st.builds(
    lambda source, a, b, reason: SourceGap(source, min(a, b), max(a, b), reason),
    st.text(min_size=1, max_size=40),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from(["timeout", "refused", "bad_node", "disconnected", "exception:2"])
    | st.integers(1, 255).map(lambda n: f"exception:{n}"),
)


@given(st.lists(source_gaps, max_size=20))
def test_key_16_round_trips_and_is_canonical_cbor(gaps: list[SourceGap]) -> None:
    mp = _proof(tuple(gaps))
    data = encode_payload(mp)
    assert decode_payload(data).source_gaps == tuple(gaps)
    obj = cbor2.loads(data)
    assert cborsafe.dumps(obj) == data
    if gaps:
        assert obj[16] == [[g.source, g.first_ts_ns, g.last_ts_ns, g.reason] for g in gaps]
    else:
        assert 16 not in obj  # no key at all when every source produced


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (["plc", 5, 4, "timeout"], "payload[16][0]"),  # last before first
        (["", 1, 2, "timeout"], "payload[16][0]"),
        (["plc", 1, 2, "asleep"], "payload[16][0][3]"),
        (["plc", 1, 2, "exception:0"], "payload[16][0][3]"),
        (["plc", 1, 2, "exception:256"], "payload[16][0][3]"),
        (["plc", True, 2, "timeout"], "payload[16][0]"),
        (["plc", 1, 2], "payload[16][0]"),
    ],
)
def test_a_malformed_source_gap_is_refused_by_name(row: list[object], field: str) -> None:
    obj = cbor2.loads(encode_payload(_proof(())))
    obj[16] = [row]
    with pytest.raises(MalformedInput) as err:
        decode_payload(cbor2.dumps(obj, canonical=True))
    assert err.value.field == field


def test_more_source_gaps_than_the_limit_are_refused() -> None:
    limits = ProofLimits(max_source_gaps=2)
    data = encode_payload(_proof(tuple(SourceGap(f"s{i}", 0, 1, "timeout") for i in range(3))))
    with pytest.raises(MalformedInput, match="3 source gaps, limit 2"):
        decode_payload(data, limits)


def test_an_outage_reported_every_poll_is_stated_once_with_its_whole_range() -> None:
    watch = SourceWatch()
    b = WindowBuilder(max_readings=1000, max_ms=1000)
    for t in range(10, 20):
        b.note([watch.failed("plc-2", "timeout", t * S)])
    [w] = b.add([_sample("flow", 25 * S)], 25 * S) + b.flush()
    assert w.source_gaps == (SourceGap("plc-2", 10 * S, 19 * S, "timeout"),)


def test_an_outage_that_spans_windows_is_not_stated_twice() -> None:
    watch = SourceWatch()
    b = WindowBuilder(max_readings=1000, max_ms=1000)
    b.note([watch.failed("opc", "disconnected", 1 * S), watch.failed("opc", "disconnected", 2 * S)])
    [first] = b.add([_sample("flow", 2 * S)], 2 * S) + b.flush()
    b.note([watch.failed("opc", "disconnected", 3 * S)])
    b.note([_ended(watch, "opc", 4 * S)])
    [second] = b.add([_sample("flow", 5 * S)], 5 * S) + b.flush()
    assert first.source_gaps == (SourceGap("opc", 1 * S, 2 * S, "disconnected"),)
    assert second.source_gaps == (SourceGap("opc", 2 * S + 1, 4 * S, "disconnected"),)


def test_two_outages_of_one_source_stay_two_ranges() -> None:
    watch = SourceWatch()
    b = WindowBuilder(max_readings=1000, max_ms=1000)
    b.note([watch.failed("plc", "timeout", 1 * S)])
    b.note([_ended(watch, "plc", 2 * S)])
    b.note([watch.failed("plc", "timeout", 5 * S)])
    [w] = b.add([_sample("flow", 6 * S)], 6 * S) + b.flush()
    assert w.source_gaps == (
        SourceGap("plc", 1 * S, 2 * S, "timeout"),
        SourceGap("plc", 5 * S, 5 * S, "timeout"),
    )


def test_source_gaps_past_a_proofs_budget_wait_for_the_next_window() -> None:
    limits = ProofLimits(max_source_gaps=2)
    b = WindowBuilder(max_readings=1000, max_ms=1000, limits=limits)
    b.note([SourceGap(f"tag{i}", i, i, "exception:2") for i in range(3)])
    [w1] = b.add([_sample("flow", 10)], 10) + b.flush()
    [w2] = b.add([_sample("flow", 11)], 11) + b.flush()
    assert [g.source for g in w1.source_gaps] == ["tag0", "tag1"]
    assert [g.source for g in w2.source_gaps] == ["tag2"]


def test_a_window_closes_before_its_statistics_pass_the_signal_limit() -> None:
    limits = ProofLimits(max_signals=3)
    b = WindowBuilder(max_readings=1000, max_ms=1000, limits=limits)
    closed = b.add([_sample(f"s{i}", i) for i in range(7)], 0) + b.flush()
    assert [len({r.signal for r in w.readings}) for w in closed] == [3, 3, 1]
    assert [r.seq for w in closed for r in w.readings] == list(range(7))  # no seq lost


def test_a_2000_signal_gateway_never_signs_more_signals_than_the_hub_takes() -> None:
    b = WindowBuilder(max_readings=65_536, max_ms=1000)
    samples = [_sample(f"dev{d:02}.tag{t:03}", 0) for d in range(20) for t in range(100)]
    closed = b.add(samples, 0) + b.flush()
    assert all(len({r.signal for r in w.readings}) <= MICROPROOF_LIMITS.max_signals for w in closed)
    merged = [merge_windows(run) for run in runs(closed)]
    assert len(merged) == 2  # a slow signer joins windows only as far as the limits allow
    assert all(len({r.signal for r in w.readings}) <= 1024 for w in merged)


def test_joined_windows_respect_the_stats_byte_budget() -> None:
    long = "x" * 100
    limits = ProofLimits(max_stats_bytes=3 * stats_cost(long + "0"))
    ws = [
        ClosedWindow((Reading(i, 0, f"{long}{i}", 1.0, ""),)) for i in range(5)
    ]  # one new signal a window
    assert [len(r) for r in runs(ws, limits)] == [3, 2]


def test_merged_windows_join_the_ranges_of_one_outage() -> None:
    a = ClosedWindow((Reading(0, 0, "f", 1.0, ""),), (), (SourceGap("plc", 1, 5, "timeout"),))
    b = ClosedWindow((Reading(1, 0, "f", 1.0, ""),), (), (SourceGap("plc", 6, 9, "timeout"),))
    assert merge_windows([a, b]).source_gaps == (SourceGap("plc", 1, 9, "timeout"),)


def test_a_text_value_keeps_its_quality() -> None:
    b = WindowBuilder(max_readings=1000, max_ms=1000)
    [w] = b.add([_sample("recipe", 0, "PVC-200")], 0) + b.flush()
    assert w.readings[0].value == "PVC-200" and w.readings[0].quality == 0


def test_source_gaps_with_no_reading_to_carry_them_stay_pending_until_one_comes() -> None:
    watch = SourceWatch()
    b = WindowBuilder(max_readings=1000, max_ms=1000)
    b.note([watch.failed("opc", "disconnected", 1 * S)])
    assert b.flush() == []  # nothing to sign: a window holds readings
    assert b.unstated_source_gaps() == [SourceGap("opc", 1 * S, 1 * S, "disconnected")]
    [w] = b.add([_sample("flow", 3 * S)], 3 * S) + b.flush()
    assert w.source_gaps == (SourceGap("opc", 1 * S, 1 * S, "disconnected"),)
    assert b.unstated_source_gaps() == []
