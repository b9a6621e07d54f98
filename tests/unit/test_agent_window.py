"""The window builder numbers readings without gaps and cuts windows by count or age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.connectors.base import Sample
from agent.window import ClosedWindow, WindowBuilder, merge_windows, runs, stats_cost
from attestation.microproof import Gap, ProofLimits
from attestation.reading import Reading


def _samples(n: int) -> list[Sample]:
    return [Sample("s", float(i), "u", i) for i in range(n)]


@given(
    batches=st.lists(st.integers(0, 50), max_size=30),
    max_readings=st.integers(1, 40),
    gaps_ms=st.lists(st.integers(0, 300), min_size=30, max_size=30),
    start=st.integers(0, 2**40),
)
def test_windows_partition_the_input_with_gap_free_seqs(
    batches: list[int], max_readings: int, gaps_ms: list[int], start: int
) -> None:
    b = WindowBuilder(max_readings=max_readings, max_ms=100, next_seq=start)
    closed: list[ClosedWindow] = []
    now = 0
    for n, gap in zip(batches, gaps_ms, strict=False):
        now += gap * 1_000_000
        closed += b.add(_samples(n), now)
    closed += b.flush()
    seqs = [r.seq for w in closed for r in w.readings]
    assert seqs == list(range(start, start + sum(batches)))
    assert all(0 < len(w.readings) <= max_readings for w in closed)


def test_a_window_closes_by_age_when_it_is_not_full() -> None:
    b = WindowBuilder(max_readings=100, max_ms=50)
    assert b.add(_samples(3), now_ns=0) == []
    assert b.tick(now_ns=49_000_000) == []
    (w,) = b.tick(now_ns=50_000_000)
    assert [r.seq for r in w.readings] == [0, 1, 2]


def test_merged_windows_must_be_consecutive() -> None:
    b = WindowBuilder(max_readings=2, max_ms=10**6)
    w1, w2 = b.add(_samples(4), 0)
    assert [r.seq for r in merge_windows([w1, w2]).readings] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="does not follow"):
        merge_windows([w2, w1])


def test_a_value_that_is_not_a_number_is_marked_bad_and_keeps_its_sub_code() -> None:
    from agent.connectors.base import QUALITY_BAD, QUALITY_UNCERTAIN, Sample
    from agent.window import WindowBuilder

    b = WindowBuilder(max_readings=10, max_ms=1000)
    b.add(
        [
            Sample("p", float("nan"), "bar", 1),
            Sample("p", float("inf"), "bar", 2, QUALITY_UNCERTAIN | 0x00A10000),
            Sample("p", 1.5, "bar", 3),
        ],
        now_ns=0,
    )
    (w,) = b.flush()
    assert [r.quality for r in w.readings] == [QUALITY_BAD, QUALITY_BAD | 0x00A10000, 0]


def _runs_reference(windows: list[ClosedWindow], limits: ProofLimits) -> list[list[int]]:
    """``runs`` as first written: every window's signals counted as soon as it is placed."""
    out: list[list[int]] = []
    signals: set[str] = set()
    readings = 0
    for i, w in enumerate(windows):
        names = {r.signal for r in w.readings}
        new = names - signals
        fits = (
            readings + len(w.readings) <= limits.max_leaves
            and len(signals | new) <= limits.max_signals
            and sum(map(stats_cost, signals | new)) <= limits.max_stats_bytes
        )
        if not out or w.gaps or not fits:
            out.append([i])
            signals, readings = set(), 0
        else:
            out[-1].append(i)
        signals |= names
        readings += len(w.readings)
    return out


@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 8),
    st.integers(1, 20),
)
def test_windows_join_into_the_runs_the_limits_allow(
    specs: list[tuple[list[str], bool]], max_signals: int, max_leaves: int
) -> None:
    limits = ProofLimits(max_signals=max_signals, max_leaves=max_leaves)
    windows, seq = [], 0
    for names, gap in specs:
        readings = tuple(Reading(seq + i, 0, s, 1.0, "") for i, s in enumerate(names))
        windows.append(ClosedWindow(readings, (Gap(0, 0, "lost"),) if gap else ()))
        seq += len(names)
    got = runs(windows, limits)
    assert [[windows.index(w) for w in run] for run in got] == _runs_reference(windows, limits)
