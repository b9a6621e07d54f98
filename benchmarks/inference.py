"""``factoryops bench inference``: µs per reading for the fp32 and int8 ONNX models.

Every model kind (PCA T2+Q, autoencoder, shadow twin, fusion) trained on the SIMULATED plant,
at batch sizes 1, 64 and 1024; a row holds one reading of every signal (plus its lag blocks,
stacked beforehand), so µs per reading = µs per row / signals.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import psutil
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from hil_tests.training import simulated_normal
from models_onnx.manifest import LoadedModel, load_model
from models_onnx.recipes import KINDS, Recipe, build
from models_onnx.scoring import stack_lags

__all__ = ["command"]

BATCHES = (1, 64, 1024)


def _us_per_reading(
    model: LoadedModel, rows: NDArray[np.float32], batch: int, seconds: float
) -> float:
    signals = len(model.manifest.signals)
    done, i, started = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        chunk = rows[i : i + batch]
        if len(chunk) < batch:
            i, chunk = 0, rows[:batch]
        model.score(chunk)
        done += len(chunk)
        i += batch
    return float(elapsed / (done * signals) * 1e6)


@click.command()
@click.option(
    "--seconds",
    type=float,
    default=1.0,
    show_default=True,
    help="Time spent per model and batch size.",
)
def command(seconds: float) -> None:
    """Inference cost per reading, fp32 vs int8, with model size and process RSS.

    \b
    Example:
      factoryops bench inference --seconds 2
    """
    signals, x = simulated_normal(300)
    rss_before = psutil.Process().memory_info().rss
    results: dict[str, dict[str, dict[int, float]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as d:
        for kind in KINDS:
            recipe = Recipe(kind=kind, lags=0 if kind == "pca" else 2)
            paths = build(recipe, x, signals, Path(d), model_id=kind)
            models = {p: load_model(m) for p, m in zip(("fp32", "int8"), paths, strict=True)}
            rows = stack_lags(x, recipe.input_lags).astype(np.float32)
            sizes[kind] = {p: m.path.stat().st_size for p, m in models.items()}
            results[kind] = {
                p: {b: _us_per_reading(m, rows, b, seconds) for b in BATCHES}
                for p, m in models.items()
            }
    rss_after = psutil.Process().memory_info().rss
    table = Table(title="ONNX inference, µs per reading (one core)")
    table.add_column("model")
    for b in BATCHES:
        table.add_column(f"batch {b}", justify="right")
    table.add_column("file bytes", justify="right")
    for kind in KINDS:
        for p in ("fp32", "int8"):
            cells = (f"{results[kind][p][b]:.3f}" for b in BATCHES)
            table.add_row(f"{kind} {p}", *cells, f"{sizes[kind][p]:,}")
    Console().print(table)
    figures: dict[str, float] = {}
    for p in ("fp32", "int8"):  # the default kind (the twin) under the historic keys
        for b in BATCHES:
            figures[f"{p}_us_per_reading_batch{b}"] = round(results["twin"][p][b], 3)
    for kind in KINDS:
        for p in ("fp32", "int8"):
            for b in BATCHES:
                figures[f"{kind}_{p}_us_per_reading_batch{b}"] = round(results[kind][p][b], 3)
            figures[f"{kind}_{p}_bytes"] = sizes[kind][p]
    figures["rss_mb"] = round(rss_after / 2**20, 1)
    figures["rss_growth_mb"] = round((rss_after - rss_before) / 2**20, 1)
    click.echo(json.dumps(figures))
