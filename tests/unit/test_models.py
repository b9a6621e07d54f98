"""ONNX anomaly models: graph equals the numpy reference, manifests guard loading, scoring rules."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.inference import OnnxScorer
from attestation.reading import Reading
from hil_tests.plant import SIGNALS, Fault, FaultKind, PumpPlant
from hil_tests.training import as_served, simulated_normal
from models_onnx.datasets import load_dataset
from models_onnx.errors import ModelError
from models_onnx.evaluate import evaluate_fixed, metrics
from models_onnx.manifest import load_model
from models_onnx.pca import fit_pca
from models_onnx.recipes import Recipe, build_pca


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    signals, x = simulated_normal(120)
    out = tmp_path_factory.mktemp("model")
    fp32, int8 = build_pca(x, signals, out, model_id="t", smoothing_span=5)
    return fp32, int8, x


def test_the_onnx_graph_matches_the_numpy_reference(trained: tuple[Path, Path, np.ndarray]) -> None:
    fp32, int8, x = trained
    ref = fit_pca(x).score(x)
    got32 = load_model(fp32).score(x.astype(np.float32))
    np.testing.assert_allclose(got32, ref, rtol=1e-3, atol=1e-3)
    got8 = load_model(int8).score(x.astype(np.float32))
    # int8 trades precision for size: within 25 % of the fp32 score on normal data
    assert np.median(np.abs(got8 - ref) / np.maximum(ref, 1e-3)) < 0.25


def test_a_tampered_model_file_is_refused(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    fp32, _, _ = trained
    copy = tmp_path / fp32.name
    shutil.copy(fp32, copy)
    onnx_file = tmp_path / json.loads(fp32.read_text())["onnx_file"]
    data = bytearray((fp32.parent / onnx_file.name).read_bytes())
    data[-10] ^= 1
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hashes to"):
        load_model(copy)


def test_a_bad_swap_keeps_the_old_model_running(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    _, int8, _ = trained
    scorer = OnnxScorer.open(int8)
    before = scorer.model
    bad = tmp_path / "bad.manifest.json"
    bad.write_text("{}")
    with pytest.raises(ModelError):
        scorer.swap(bad)
    assert scorer.model is before


def _rows(values: list[dict[str, float]], t0: int = 0) -> list[Reading]:
    out, seq = [], 0
    for k, row in enumerate(values):
        for name, v in row.items():
            out.append(Reading(seq, t0 + k, name, v, SIGNALS.get(name, "")))
            seq += 1
    return out


def test_scoring_rules_for_nan_missing_and_unknown_signals(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    _, int8, _ = trained
    scorer = OnnxScorer.open(int8)
    plant = PumpPlant(seed=3, faults=())
    good = [dict(zip(SIGNALS, as_served(plant.step(0.1)), strict=True)) for _ in range(12)]
    ws = scorer.score_window(_rows(good))
    assert all(not math.isnan(s) for s in ws.scores)
    assert ws.model.id == "t"
    assert ws.drift is not None
    nan_row = dict(good[0], Pressure=float("nan"))
    missing = {k: v for k, v in good[1].items() if k != "Current"}
    ws = scorer.score_window(_rows([nan_row, missing, {**good[2], "Unknown": 5.0}]))
    n = len(SIGNALS)
    assert all(math.isnan(s) for s in ws.scores[:n])  # NaN in the row: not scored
    assert all(not math.isnan(s) for s in ws.scores[n:])  # missing: forward-filled


def test_a_closing_valve_raises_the_score_of_the_simulated_plant(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    _, int8, _ = trained
    model = load_model(int8)
    # the valve creeps 70 % shut from 120 s (an explicit schedule: the default one may move)
    plant = PumpPlant(seed=11, faults=(Fault(120, 60, FaultKind.VALVE_CLOSING, 0.7),))
    rows = np.array([as_served(plant.step(0.5)) for _ in range(400)], dtype=np.float32)
    score = model.score(rows)
    normal = score[:200]  # t < 100 s: before the first fault
    valve = score[260:360]  # t in 130..180 s: the valve is closing
    assert np.median(normal) < 1 < np.median(valve)


def test_metrics_follow_the_skab_definitions() -> None:
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    pred = np.array([0, 1, 0, 0, 1, 1, 0, 0], dtype=bool)
    m = metrics(pred, truth)
    assert m.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert m.far == pytest.approx(25.0)
    assert m.mar == pytest.approx(50.0)


def test_eval_takes_every_labelled_csv_and_skips_the_rest(skab_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "anything").mkdir()
    shutil.copy(skab_dir / "valve1" / "0.csv", tmp_path / "anything" / "a.csv")
    shutil.copy(skab_dir / "anomaly-free" / "anomaly-free.csv", tmp_path / "free.csv")
    series = load_dataset(tmp_path)
    assert [s.name for s in series] == ["anything/a.csv"]
    (out,) = evaluate_fixed(series, Recipe(kind="pca", lags=0, span=5))
    m = out.counts("int8").metrics
    assert 0.0 <= m.f1 <= 1.0
    assert 0.0 <= m.far <= 100.0
