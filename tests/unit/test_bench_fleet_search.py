"""``bench fleet``'s search for the largest fleet a hub core holds (benchmarks/fleet.py)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.fleet import largest_holding


def _capacity(limit: int, tried: list[int]) -> Callable[[int], bool]:
    def holds(n: int) -> bool:
        tried.append(n)
        return n <= limit

    return holds


def test_the_ramp_then_two_midpoints_narrow_the_gap_to_a_fifth() -> None:
    """2,000 x 1.5 ... 10,125 holds, 15,188 does not; then 12,401 holds, 13,724 holds: the
    sizes of the run recorded in docs/performance.md."""
    tried: list[int] = []
    best = largest_holding(_capacity(14_000, tried), 2_000, 1.5, 40_000, 2)
    assert tried == [2_000, 3_000, 4_500, 6_750, 10_125, 15_188, 12_401, 13_724]
    assert best == 13_724


@given(
    limit=st.integers(0, 100_000),
    first=st.integers(1, 5_000),
    step=st.floats(1.05, 3.0),
    refine=st.integers(0, 6),
)
def test_the_answer_always_held_and_nothing_is_tried_twice(
    limit: int, first: int, step: float, refine: int
) -> None:
    tried: list[int] = []
    best = largest_holding(_capacity(limit, tried), first, step, 200_000, refine)
    assert best <= limit
    assert best == 0 or best in tried
    assert len(tried) == len(set(tried))
    assert best == 0 if limit < first else best >= first
