"""The window builder numbers readings without gaps and cuts windows by count or age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.connectors.base import Sample
from agent.window import ClosedWindow, WindowBuilder, merge_windows


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
