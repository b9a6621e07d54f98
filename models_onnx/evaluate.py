"""SKAB-protocol evaluation: per file, fit on the first 400 rows, score the rest, pool.

Every CSV with an ``anomaly`` column under the folder counts (whatever its sub-folder);
F1 of the anomaly class, FAR % = false alarms / normals, MAR % = misses / anomalies.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models_onnx.errors import ModelError
from models_onnx.manifest import load_model
from models_onnx.recipes import Recipe, build, ewma

__all__ = ["FileResult", "Metrics", "alarms", "evaluate_folder", "metrics", "read_labelled_csv"]

TRAIN_ROWS = 400  # the SKAB outlier-detection protocol


@dataclass(frozen=True, slots=True)
class Metrics:
    f1: float
    far: float  # %
    mar: float  # %

    def as_json(self) -> dict[str, float]:
        return {"f1": round(self.f1, 4), "far": round(self.far, 2), "mar": round(self.mar, 2)}


@dataclass(frozen=True, slots=True)
class FileResult:
    path: Path
    rows: int
    fp32: Metrics
    int8: Metrics


def metrics(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> Metrics:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    normals, anomalies = int((~truth).sum()), int(truth.sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return Metrics(
        f1, 100 * fp / normals if normals else 0.0, 100 * fn / anomalies if anomalies else 0.0
    )


def read_labelled_csv(
    path: Path,
) -> tuple[list[str], NDArray[np.float64], NDArray[np.bool_]] | None:
    """Signals, values and labels of a SKAB-format CSV; None when it has no anomaly column."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    if not rows or "anomaly" not in rows[0]:
        return None
    header = rows[0]
    skip = {"datetime", "anomaly", "changepoint"}
    cols = [i for i, h in enumerate(header) if h not in skip]
    a = header.index("anomaly")
    try:
        x = np.array([[float(r[i]) for i in cols] for r in rows[1:]], dtype=np.float64)
        y = np.array([float(r[a]) > 0.5 for r in rows[1:]], dtype=np.bool_)
    except (ValueError, IndexError) as err:
        raise ModelError(f"{path}: unreadable row ({err})") from err
    return [header[i] for i in cols], x, y


def evaluate_folder(
    folder: Path,
    recipe: Recipe | None = None,
    *,
    explained: float = 0.85,
    quantile: float = 0.99,
    span: int = 5,
    progress: Callable[[Path], None] | None = None,
) -> tuple[list[FileResult], Metrics, Metrics]:
    """Per labelled file: build ``recipe`` on its first 400 rows, alarm on the rest; pool.

    Without a recipe the PCA T2+Q one is built from ``explained``, ``quantile``, ``span``.
    """
    if recipe is None:
        recipe = Recipe(kind="pca", explained=explained, pca_quantile=quantile, span=span, lags=0)
    files = sorted(p for p in folder.rglob("*.csv"))
    results: list[FileResult] = []
    pooled: dict[str, list[NDArray[np.bool_]]] = {"fp32": [], "int8": []}
    truths: list[NDArray[np.bool_]] = []
    for path in files:
        if progress:
            progress(path)
        data = read_labelled_csv(path)
        if data is None:
            continue
        signals, x, y = data
        if len(x) <= TRAIN_ROWS:
            continue
        per: dict[str, Metrics] = {}
        with tempfile.TemporaryDirectory() as d:
            manifests = build(recipe, x[:TRAIN_ROWS], signals, Path(d), model_id="eval")
            for kind, manifest in zip(("fp32", "int8"), manifests, strict=True):
                pred = alarms(manifest, x)[TRAIN_ROWS:]
                pooled[kind].append(pred)
                per[kind] = metrics(pred, y[TRAIN_ROWS:])
        truths.append(y[TRAIN_ROWS:])
        results.append(FileResult(path, len(x), per["fp32"], per["int8"]))
    if not results:
        raise ModelError(f"no CSV with an 'anomaly' column under {folder}")
    truth = np.concatenate(truths)
    return (
        results,
        metrics(np.concatenate(pooled["fp32"]), truth),
        metrics(np.concatenate(pooled["int8"]), truth),
    )


def alarms(manifest: Path, x: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Alarm per row of one continuous recording (training rows first, as the agent sees it)."""
    model = load_model(manifest)
    raw = model.score_rows(x).astype(np.float64)
    smoothed = ewma(raw, model.manifest.smoothing_span)
    out: NDArray[np.bool_] = smoothed > model.manifest.threshold
    return out


@dataclass(frozen=True, slots=True)
class LofoResult:
    """Leave-one-file-out selection: each file scored with the recipe that did best on the
    *other* files (pooled fp32 F1), so no file's own labels choose its settings."""

    chosen: list[tuple[Path, Recipe]]
    fp32: Metrics
    int8: Metrics
    grid: list[tuple[Recipe, Metrics]]  # every candidate on all files (int8), for the record


def evaluate_lofo(
    folder: Path, grid: list[Recipe], *, progress: Callable[[str], None] | None = None
) -> LofoResult:
    files: list[tuple[Path, list[str], NDArray[np.float64], NDArray[np.bool_]]] = []
    for path in sorted(folder.rglob("*.csv")):
        data = read_labelled_csv(path)
        if data is not None and len(data[1]) > TRAIN_ROWS:
            files.append((path, *data))
    if not files:
        raise ModelError(f"no CSV with an 'anomaly' column under {folder}")
    preds: dict[tuple[int, int, str], NDArray[np.bool_]] = {}
    for g, recipe in enumerate(grid):
        for i, (path, signals, x, _) in enumerate(files):
            if progress:
                progress(f"{recipe.kind} lags={recipe.lags} span={recipe.span}: {path.name}")
            with tempfile.TemporaryDirectory() as d:
                m32, m8 = build(recipe, x[:TRAIN_ROWS], signals, Path(d), model_id="lofo")
                preds[(g, i, "fp32")] = alarms(m32, x)[TRAIN_ROWS:]
                preds[(g, i, "int8")] = alarms(m8, x)[TRAIN_ROWS:]
    truth = [y[TRAIN_ROWS:] for *_, y in files]

    def pooled(g: int, idx: list[int], kind: str) -> Metrics:
        return metrics(
            np.concatenate([preds[(g, i, kind)] for i in idx]),
            np.concatenate([truth[i] for i in idx]),
        )

    everything = list(range(len(files)))
    chosen = []
    for i in everything:
        others = [j for j in everything if j != i]  # file i's labels play no part
        chosen.append(max(range(len(grid)), key=lambda g: pooled(g, others, "fp32").f1))
    out = {
        kind: metrics(
            np.concatenate([preds[(g, i, kind)] for i, g in enumerate(chosen)]),
            np.concatenate(truth),
        )
        for kind in ("fp32", "int8")
    }
    return LofoResult(
        [(files[i][0], grid[g]) for i, g in enumerate(chosen)],
        out["fp32"],
        out["int8"],
        [(grid[g], pooled(g, everything, "int8")) for g in range(len(grid))],
    )
