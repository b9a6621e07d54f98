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
from models_onnx.autoencoder import fit_autoencoder
from models_onnx.cli import model as model_cli
from models_onnx.ensemble import fit_ensemble
from models_onnx.errors import ModelError
from models_onnx.evaluate import evaluate_folder
from models_onnx.manifest import load_model, write_manifest
from models_onnx.recipes import Recipe, build
from models_onnx.scoring import input_names, stack_lags
from models_onnx.twin import fit_twin

LAGS = 2


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
    fit = {"twin": fit_twin, "autoencoder": fit_autoencoder, "ensemble": fit_ensemble}[kind]
    ref = fit(x[:300], lags=LAGS).score(stack_lags(x, LAGS))
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
        assert m.threshold == 1.0 and m.smoothing_span == 10
        assert m.training_rows == len(x) and len(m.training_sha256) == 64


def test_a_manifest_whose_schema_does_not_fit_the_graph_is_refused(
    twin: tuple[Path, Path], tmp_path: Path
) -> None:
    fp32, _ = twin
    m = load_model(fp32).manifest
    (tmp_path / m.onnx_file).write_bytes((fp32.parent / m.onnx_file).read_bytes())
    bad = tmp_path / "bad.manifest.json"
    write_manifest(bad, dataclasses.replace(m, lags=0, inputs=()))
    with pytest.raises(ModelError, match="24 input columns"):
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
    lines += [";".join(["t", *(repr(float(v)) for v in row)]) for row in x]
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


def test_int8_twin_keeps_the_fp32_alarms_on_skab(skab_dir: Path, tmp_path: Path) -> None:
    for name in ("0.csv", "5.csv"):
        (tmp_path / name).write_bytes((skab_dir / "valve1" / name).read_bytes())
    _, fp32, int8 = evaluate_folder(tmp_path, Recipe(kind="twin"))
    assert fp32.f1 > 0.6
    assert abs(int8.f1 - fp32.f1) < 0.05


def test_lofo_never_lets_a_files_own_labels_pick_its_settings(
    skab_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from models_onnx.evaluate import evaluate_lofo
    from models_onnx.recipes import Recipe

    picks = sorted((skab_dir / "valve1").glob("*.csv"))[:3]
    for p in picks:
        shutil.copy(p, tmp_path / p.name)
    grid = [Recipe(kind="twin", lags=0, span=5), Recipe(kind="twin", lags=2, span=10)]
    before = evaluate_lofo(tmp_path, grid)
    first = tmp_path / picks[0].name  # invert that file's labels: its choice must not move
    lines = first.read_text().splitlines()
    col = lines[0].split(";").index("anomaly")
    flipped = [lines[0]] + [
        ";".join(c if k != col else str(1 - int(float(c))) for k, c in enumerate(r.split(";")))
        for r in lines[1:]
    ]
    first.write_text("\n".join(flipped) + "\n")
    after = evaluate_lofo(tmp_path, grid)
    assert before.chosen[0] == after.chosen[0]
    assert before.fp32 != after.fp32  # the labels did change the score, just not the choice
