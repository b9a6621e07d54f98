"""``factoryops bench inference``: µs per reading for the fp32 and int8 ONNX models.

The demo's PCA T2+Q model (trained on the SIMULATED plant) at batch sizes 1, 64 and 1024;
a row holds one reading of every signal, so µs per reading = µs per row / signals.
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
from models_onnx.recipes import build_pca

__all__ = ["command"]

BATCHES = (1, 64, 1024)


def _us_per_reading(
    model: LoadedModel, rows: NDArray[np.float32], batch: int, seconds: float
) -> float:
    signals = rows.shape[1]
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
    rows = x.astype(np.float32)
    rss_before = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory() as d:
        fp32_m, int8_m = build_pca(x, signals, Path(d), model_id="bench")
        models = {"fp32": load_model(fp32_m), "int8": load_model(int8_m)}
        sizes = {k: m.path.stat().st_size for k, m in models.items()}
        results = {
            k: {b: _us_per_reading(m, rows, b, seconds) for b in BATCHES} for k, m in models.items()
        }
    rss_after = psutil.Process().memory_info().rss
    table = Table(title="ONNX inference, µs per reading (one core)")
    table.add_column("model")
    for b in BATCHES:
        table.add_column(f"batch {b}", justify="right")
    table.add_column("file bytes", justify="right")
    for k in ("fp32", "int8"):
        table.add_row(k, *(f"{results[k][b]:.3f}" for b in BATCHES), f"{sizes[k]:,}")
    Console().print(table)
    click.echo(
        json.dumps(
            {
                "fp32_us_per_reading_batch1": round(results["fp32"][1], 3),
                "int8_us_per_reading_batch1": round(results["int8"][1], 3),
                "fp32_us_per_reading_batch64": round(results["fp32"][64], 3),
                "int8_us_per_reading_batch64": round(results["int8"][64], 3),
                "fp32_us_per_reading_batch1024": round(results["fp32"][1024], 3),
                "int8_us_per_reading_batch1024": round(results["int8"][1024], 3),
                "fp32_bytes": sizes["fp32"],
                "int8_bytes": sizes["int8"],
                "rss_mb": round(rss_after / 2**20, 1),
                "rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
            }
        )
    )
