"""The gateway's lean paths (ADR 0033) give the numbers the general ones give: scoring off
scipy (~68 MiB of RSS for one EWMA and one p-value) and statistics of a signal read once."""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import special
from scipy.signal import lfilter

from agent.inference import kolmogorov_sf
from attestation.microproof import SignalStats, _mean, _stats_once, compute_stats
from attestation.reading import Reading
from models_onnx.scoring import EWMA_LOOP_MAX, ewma

_values = arrays(
    np.float64,
    st.integers(1, 300),
    elements=st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=100, deadline=None)
@given(_values, st.integers(2, 400), st.one_of(st.none(), st.floats(-1e9, 1e9)))
def test_the_agents_ewma_is_lfilter_to_the_last_bit(
    x: np.ndarray, span: int, start: float | None
) -> None:
    a = 2.0 / (span + 1)
    acc = float(x[0]) if start is None else start
    want, _ = lfilter([a], [1.0, a - 1.0], x, zi=[(1 - a) * acc])
    np.testing.assert_array_equal(ewma(x, span, start), want)


def test_a_training_sized_series_still_goes_through_lfilter_with_the_same_result() -> None:
    x = np.random.default_rng(3).standard_normal(EWMA_LOOP_MAX + 10)
    a = 2.0 / 6
    want, _ = lfilter([a], [1.0, a - 1.0], x, zi=[(1 - a) * x[0]])
    np.testing.assert_array_equal(ewma(x, 5), want)
    np.testing.assert_array_equal(ewma(x[:EWMA_LOOP_MAX], 5), want[:EWMA_LOOP_MAX])


@pytest.mark.parametrize(
    "x", [*np.linspace(0.02, 1.2, 60).tolist(), *np.linspace(1.2, 27.0, 60).tolist()]
)
def test_the_kolmogorov_p_value_is_scipys(x: float) -> None:
    assert kolmogorov_sf(x) == pytest.approx(float(special.kolmogorov(x)), rel=1e-12, abs=1e-300)


def test_no_difference_and_no_number_read_as_no_drift() -> None:
    assert kolmogorov_sf(0.0) == kolmogorov_sf(-1.0) == kolmogorov_sf(float("nan")) == 1.0


def test_the_agent_with_a_model_imports_no_scipy() -> None:
    code = (
        "import sys, agent.runtime, agent.cli, agent.inference, models_onnx.manifest\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"scipy modules loaded by the agent: {out}"


def _two_passes(xs: list[float]) -> tuple[int, float, float, float, float]:
    """compute_stats' general form, for any number of values: M2 is the exact sum of the
    squared deviations rounded to a float, so +inf when that sum is past the largest one."""
    mean = _mean(xs)
    try:
        m2 = math.fsum([(x - mean) * (x - mean) for x in xs])
    except OverflowError:
        m2 = math.inf
    return len(xs), mean, m2, min(xs), max(xs)


def test_a_window_whose_m2_overflows_seals_and_verifies() -> None:
    """-1e154 and 1e154 read in one window: their squared deviations sum past the largest
    float and fsum raised, so the window could not be sealed (Hypothesis found it). M2 is
    +inf, and the proof carries it and verifies."""
    from agent.sealer import seal
    from agent.window import ClosedWindow
    from attestation import parse_microproof, verify_chain
    from attestation.microproof import GENESIS_PREV
    from attestation.signers.software import SoftwareSigner

    readings = (Reading(0, 0, "a", -1e154, "bar"), Reading(1, 1, "a", 1e154, "bar"))
    assert compute_stats(readings)["a"] == (2, 0.0, math.inf, -1e154, 1e154)
    sealed = seal(
        ClosedWindow(readings), index=0, prev=GENESIS_PREV, signer=SoftwareSigner.generate(), iat=1
    )
    verify_chain([sealed.cose])
    assert parse_microproof(sealed.cose).proof.stats["a"].m2 == math.inf


_value = st.floats(allow_nan=False) | st.sampled_from([0.0, -0.0, math.inf, -math.inf])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), _value), min_size=1, max_size=12))
def test_a_signal_read_once_gets_the_statistics_of_the_two_pass_form(
    values: list[tuple[str, float]],
) -> None:
    readings = [Reading(i, i, name, x, "") for i, (name, x) in enumerate(values)]
    got = compute_stats(readings)
    for name, stats in got.items():
        want = _two_passes([x for n, x in values if n == name])
        # bit for bit: the signed payload carries these floats (0.0 and -0.0 differ)
        assert [struct.pack(">d", float(v)) for v in stats] == [
            struct.pack(">d", float(v)) for v in want
        ]


def _reference_stats(readings: list[Reading]) -> dict[str, tuple[int, float, float, float, float]]:
    """compute_stats' definition: the two-pass form over each signal's float values, NaN and
    text skipped, signals in sorted order."""
    by: dict[str, list[float]] = {}
    for r in readings:
        if type(r.value) is float and not math.isnan(r.value):
            by.setdefault(r.signal, []).append(r.value)
    return {s: _two_passes(by[s]) for s in sorted(by)}


_any_value = _value | st.just(math.nan) | st.sampled_from(["on", ""])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=30, unique=True),
    st.data(),
)
def test_a_window_of_signals_read_once_gets_the_general_statistics(
    names: list[str], data: st.DataObject
) -> None:
    """The fast path for a window that reads each signal once (``_stats_once``, a big
    gateway's window) against the reference, bit for bit and in the same key order; with
    a NaN, a text value or a signal read twice it must step aside for the general path."""
    values = data.draw(st.lists(_any_value, min_size=len(names), max_size=len(names)))
    twice = data.draw(st.booleans())
    readings = [Reading(i, i, n, x, "") for i, (n, x) in enumerate(zip(names, values, strict=True))]
    if twice:
        readings.append(Reading(len(readings), 0, names[0], data.draw(_value), ""))
    got, want = compute_stats(readings), _reference_stats(readings)
    assert list(got) == list(want)
    for name, stats in got.items():
        assert type(stats) is SignalStats
        assert [struct.pack(">d", float(v)) for v in stats] == [
            struct.pack(">d", float(v)) for v in want[name]
        ]
    plain = all(type(x) is float and not math.isnan(x) for x in values) and not twice
    assert (_stats_once(readings) is not None) == plain
