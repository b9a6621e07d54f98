"""Hypothesis strategies shared by the proof-core tests."""

from __future__ import annotations

from hypothesis import strategies as st

from attestation.reading import Reading

signals = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
units = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
# a reading's value: a float, or text for a source value that is not a number
values = st.floats(allow_nan=True, allow_infinity=True, width=64) | texts


@st.composite
def readings(draw: st.DrawFn, seq: int | None = None) -> Reading:
    return Reading(
        seq=draw(st.integers(0, 2**63 - 1)) if seq is None else seq,
        ts_ns=draw(st.integers(-(2**63), 2**63 - 1)),
        signal=draw(signals),
        value=draw(values),
        unit=draw(units),
        quality=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def windows(draw: st.DrawFn, max_size: int = 40) -> list[Reading]:
    """A window of consecutive seqs with non-decreasing timestamps and finite values."""
    n = draw(st.integers(1, max_size))
    first = draw(st.integers(0, 2**40))
    t0 = draw(st.integers(0, 2**62))
    names = draw(st.lists(signals, min_size=1, max_size=4, unique=True))
    out = []
    for i in range(n):
        out.append(
            Reading(
                seq=first + i,
                ts_ns=t0 + i * 1_000_000,
                signal=names[i % len(names)],
                value=draw(st.floats(-1e6, 1e6, allow_nan=False)),
                unit="u",
                quality=0,
            )
        )
    return out
