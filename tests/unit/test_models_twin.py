"""Twin, autoencoder and fusion recipes: each ONNX graph equals its numpy reference, int8 keeps
the alarms, the manifest states the input schema, and the agent feeds lagged rows correctly."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.inference import OnnxScorer
from attestation.reading import Reading
from hil_tests.training import simulated_normal
from models_onnx.cli import model as model_cli
from models_onnx.errors import ModelError
from models_onnx.manifest import load_model, write_manifest
from models_onnx.recipes import Recipe, build, fit_model
from models_onnx.scoring import input_names, stack_lags

LAGS = Recipe().lags


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray]:
    signals, x = simulated_normal(60)  # 600 rows x 8 signals
    return signals, x


@pytest.fixture(scope="module")
def twin(
    data: tuple[list[str], np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    signals, x = data
    return build(Recipe(kind="twin"), x, signals, tmp_path_factory.mktemp("twin"), model_id="t")


def test_lag_stacking_in_chunks_equals_stacking_at_once(data: tuple[list[str], np.ndarray]) -> None:
    _, x = data
    whole = stack_lags(x[:50], LAGS)
    parts = np.concatenate([stack_lags(x[:20], LAGS), stack_lags(x[20:50], LAGS, x[:20])])
    np.testing.assert_array_equal(whole, parts)
    assert whole.shape == (50, 8 * (LAGS + 1))
    np.testing.assert_array_equal(whole[5, 8:16], x[4])  # block 1 is t-1


@pytest.mark.parametrize("kind", ["twin", "autoencoder", "ensemble"])
def test_the_onnx_graph_matches_the_numpy_reference(
    kind: str, data: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    signals, x = data
    ref = fit_model(Recipe(kind=kind), x[:300]).score(stack_lags(x, LAGS))
    fp32, int8 = build(Recipe(kind=kind), x[:300], signals, tmp_path, model_id=kind)
    got = load_model(fp32).score_rows(x)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    got8 = load_model(int8).score_rows(x).astype(np.float64)
    # int8 quantises the MatMul inputs: the alarm decision (smoothed > 1) is what must hold
    assert np.corrcoef(got8, ref)[0, 1] > 0.9


def test_the_manifest_states_the_input_schema(
    twin: tuple[Path, Path], data: tuple[list[str], np.ndarray]
) -> None:
    signals, x = data
    for path in twin:
        m = load_model(path).manifest
        assert m.lags == LAGS
        assert m.inputs == input_names(signals, LAGS)
        assert m.inputs[8] == f"{signals[0]}@t-1"
        assert m.scaling[signals[0]] == pytest.approx((x[:, 0].mean(), x[:, 0].std()))
        assert m.outputs == ("score", "residuals")
        assert m.threshold == 1.0 and m.smoothing_span == Recipe().span
        assert m.training_rows == len(x) and len(m.training_sha256) == 64


def test_a_manifest_whose_schema_does_not_fit_the_graph_is_refused(
    twin: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, _ = twin
    m = load_model(fp32).manifest
    (tmp_path / m.onnx_file).write_bytes((fp32.parent / m.onnx_file).read_bytes())
    bad = tmp_path / "bad.manifest.json"
    write_manifest(bad, dataclasses.replace(m, lags=0, inputs=()))
    with pytest.raises(ModelError, match=f"{8 * (LAGS + 1)} input columns"):
        load_model(bad)


def test_a_manifest_written_before_the_schema_fields_still_loads(
    twin: tuple[Path, Path], tmp_path: Path, data: tuple[list[str], np.ndarray]
) -> None:
    signals, x = data
    fp32, _ = build(Recipe(kind="pca", lags=0, span=5), x, signals, tmp_path, model_id="p")
    doc = json.loads(fp32.read_text())
    for key in ("lags", "inputs", "scaling", "outputs"):
        del doc[key]
    fp32.write_text(json.dumps(doc))
    assert load_model(fp32).manifest.columns == tuple(signals)


def _readings(x: np.ndarray, signals: list[str], t0: int = 0) -> list[Reading]:
    out, seq = [], 0
    for k, row in enumerate(x):
        for name, v in zip(signals, row, strict=True):
            out.append(Reading(seq, t0 + k, name, float(v), ""))
            seq += 1
    return out


def test_the_agent_feeds_lagged_rows_across_windows(
    twin: tuple[Path, Path], data: tuple[list[str], np.ndarray]
) -> None:
    signals, x = data
    rows = x[100:140]
    one = OnnxScorer.open(twin[1])
    whole = one.score_window(_readings(rows, signals))
    two = OnnxScorer.open(twin[1])
    a = two.score_window(_readings(rows[:15], signals))
    b = two.score_window(_readings(rows[15:], signals, t0=15))
    np.testing.assert_allclose(whole.scores, a.scores + b.scores, rtol=1e-5)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.just(8)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    )
)
def test_arbitrary_floats_never_crash_inference(
    twin: tuple[Path, Path], data: tuple[list[str], np.ndarray], values: np.ndarray
) -> None:
    signals, _ = data
    scorer = OnnxScorer.open(twin[1])
    ws = scorer.score_window(_readings(values, signals))
    assert len(ws.scores) == values.size
    for row, s in zip(np.repeat(values, 8, axis=0)[::8], ws.scores[::8], strict=True):
        if not (np.isfinite(row) & (np.abs(row) <= np.finfo(np.float32).max)).all():
            assert math.isnan(s)  # a row that cannot be scored is marked, not guessed


def test_quantize_command_writes_an_int8_model_and_manifest(
    twin: tuple[Path, Path], data: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    signals, x = data
    csv = tmp_path / "train.csv"
    lines = [";".join(["datetime", *signals])]
    lines += [";".join([str(k), *(repr(float(v)) for v in row)]) for k, row in enumerate(x)]
    csv.write_text("\n".join(lines) + "\n")
    fp32 = twin[0].parent / load_model(twin[0]).manifest.onnx_file
    out = tmp_path / "q.int8.onnx"
    res = CliRunner().invoke(
        model_cli, ["quantize", str(fp32), "--calibration", str(csv), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    m = load_model(tmp_path / "q.int8.manifest.json")
    assert m.manifest.quantized and m.manifest.lags == LAGS
    assert np.isfinite(m.score_rows(x[:10])).all()


def test_the_drift_test_is_the_two_sample_ks_with_kolmogorovs_limit_p_value() -> None:
    from scipy import stats

    from agent.inference import _ks_drift

    rng = np.random.default_rng(5)
    train = np.sort(rng.exponential(1.0, 101))
    for shift in (0.0, 0.5, 2.0):
        raw = rng.exponential(1.0, 125) + shift
        got = _ks_drift(raw, train)
        want = stats.ks_2samp(raw, train)
        assert got.statistic == pytest.approx(want.statistic)
        en = len(raw) * len(train) / (len(raw) + len(train))
        limit = stats.kstwobign.sf(want.statistic * math.sqrt(en))
        assert got.p_value == pytest.approx(limit, rel=1e-9, abs=1e-15)
        assert got.p_value == pytest.approx(want.pvalue, abs=0.03)  # scipy's finite-n form
        assert got.drifted == (want.pvalue < 0.01)


def test_readings_out_of_time_order_and_repeated_score_like_rows_in_order(
    twin: tuple[Path, Path], data: tuple[list[str], np.ndarray]
) -> None:
    signals, x = data
    rows = x[200:230]
    ordered = OnnxScorer.open(twin[0]).score_window(_readings(rows, signals))
    shuffled = _readings(rows, signals)
    # a stale duplicate of each row's first signal comes first: the later reading must win
    stale = [Reading(r.seq, r.ts_ns, r.signal, r.value + 100.0, "") for r in shuffled[::8]]
    mixed = [*stale, *shuffled]
    got = OnnxScorer.open(twin[0]).score_window(mixed)
    np.testing.assert_allclose(got.scores[len(stale) :], ordered.scores, rtol=1e-6)
