"""``factoryops bench inference``: µs per reading for the fp32 and int8 ONNX models, and what
the agent spends in all to score a window.

Every model kind (PCA T2+Q, autoencoder, shadow twin, fusion) trained on the SIMULATED plant,
at batch sizes 1, 64 and 1024; a row holds one reading of every signal (plus its lag blocks,
stacked beforehand), so µs per reading = µs per row / signals. ``agent_scoring_us_per_reading``
times ``OnnxScorer.score_window`` on full windows (``WindowConfig.max_readings``) of the
shipped recipe: grouping readings into rows, forward fill, lag stacking, ONNX, EWMA, the
anomaly summary and the drift test. fp32 and int8 are timed in alternation and the medians
compared, so a shared machine's load falls on both alike.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import psutil
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from agent.config import WindowConfig
from agent.inference import OnnxScorer
from attestation.reading import Reading
from hil_tests.training import simulated_normal
from models_onnx.manifest import LoadedModel, load_model
from models_onnx.recipes import KINDS, Recipe, build
from models_onnx.scoring import stack_lags

__all__ = ["command"]

BATCHES = (1, 64, 1024)
SHIPPED = "fp32"  # the precision the agent loads (docs/adr/0019-int8-or-fp32-on-the-gateway.md)


def _windows(signals: list[str], x: NDArray[np.float64], size: int) -> list[list[Reading]]:
    rows = max(1, size // len(signals))
    out, seq = [], 0
    for start in range(0, len(x) - rows + 1, rows):
        window = []
        for k, row in enumerate(x[start : start + rows]):
            for name, v in zip(signals, row, strict=True):
                window.append(Reading(seq, (start + k) * 1_000_000_000, name, float(v), ""))
                seq += 1
        out.append(window)
    return out


ROUNDS = 5  # alternations of fp32 and int8 per measurement; the median of each is kept


def _alternate(work: dict[str, Callable[[], int]], seconds: float) -> dict[str, float]:
    """Median CPU µs per reading of each ``work`` (returns readings done), the entries timed
    in alternating rounds of ``seconds / ROUNDS`` so a shared machine's load falls on all
    alike. CPU time of this thread (``time.thread_time``; onnxruntime runs in the caller's
    thread with one intra-op thread): what a gateway core spends, without the waits that
    other processes on a busy machine add to wall time."""
    per: dict[str, list[float]] = {p: [] for p in work}
    for _ in range(ROUNDS):
        for p, fn in work.items():
            done, started, cpu = 0, time.perf_counter(), time.thread_time()
            while time.perf_counter() - started < seconds / ROUNDS or not done:
                done += fn()
            per[p].append((time.thread_time() - cpu) / done * 1e6)
    return {p: float(np.median(v)) for p, v in per.items()}


def _batches(model: LoadedModel, rows: NDArray[np.float32], batch: int) -> Callable[[], int]:
    signals = len(model.manifest.signals)
    chunk = rows[:batch]

    def run() -> int:
        model.score(chunk)
        return len(chunk) * signals

    return run


def _windows_of(scorer: OnnxScorer, windows: list[list[Reading]]) -> Callable[[], int]:
    def run() -> int:
        for w in windows:
            scorer.score_window(w)
        return sum(len(w) for w in windows)

    return run


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
            recipe = Recipe(kind=kind, lags=0) if kind == "pca" else Recipe(kind=kind)
            paths = build(recipe, x, signals, Path(d), model_id=kind)
            models = {p: load_model(m) for p, m in zip(("fp32", "int8"), paths, strict=True)}
            rows = stack_lags(x, recipe.input_lags).astype(np.float32)
            sizes[kind] = {p: m.path.stat().st_size for p, m in models.items()}
            results[kind] = {p: {} for p in models}
            for b in BATCHES:
                us = _alternate({p: _batches(m, rows, b) for p, m in models.items()}, seconds)
                for p, v in us.items():
                    results[kind][p][b] = v
        shipped = build(Recipe(), x, signals, Path(d), model_id="shipped")
        windows = _windows(signals, x, WindowConfig().max_readings)
        agent = _alternate(
            {
                p: _windows_of(OnnxScorer.open(m), windows)
                for p, m in zip(("fp32", "int8"), shipped, strict=True)
            },
            2 * seconds,
        )
    rss_after = psutil.Process().memory_info().rss
    table = Table(title="ONNX inference, CPU µs per reading (one core)")
    table.add_column("model")
    for b in BATCHES:
        table.add_column(f"batch {b}", justify="right")
    table.add_column("file bytes", justify="right")
    for kind in KINDS:
        for p in ("fp32", "int8"):
            cells = (f"{results[kind][p][b]:.3f}" for b in BATCHES)
            table.add_row(f"{kind} {p}", *cells, f"{sizes[kind][p]:,}")
    console = Console()
    console.print(table)
    ratio = agent["int8"] / agent["fp32"]
    console.print(
        f"agent scoring, shipped recipe ({Recipe().label()}), windows of "
        f"{WindowConfig().max_readings} readings: fp32 {agent['fp32']:.3f} µs/reading, "
        f"int8 {agent['int8']:.3f} µs/reading (int8/fp32 {ratio:.2f}); ships {SHIPPED}"
    )
    figures: dict[str, float | bool | str] = {}
    for p in ("fp32", "int8"):  # the default kind (the twin) under the historic keys
        for b in BATCHES:
            figures[f"{p}_us_per_reading_batch{b}"] = round(results["twin"][p][b], 3)
    for kind in KINDS:
        for p in ("fp32", "int8"):
            for b in BATCHES:
                figures[f"{kind}_{p}_us_per_reading_batch{b}"] = round(results[kind][p][b], 3)
            figures[f"{kind}_{p}_bytes"] = sizes[kind][p]
    figures["agent_scoring_us_per_reading"] = round(agent[SHIPPED], 3)
    figures["agent_scoring_us_per_reading_fp32"] = round(agent["fp32"], 3)
    figures["agent_scoring_us_per_reading_int8"] = round(agent["int8"], 3)
    figures["agent_scoring_int8_over_fp32"] = round(ratio, 3)
    batch = results["twin"]
    figures["int8_slower_than_fp32"] = bool(
        ratio > 1 or batch["int8"][BATCHES[1]] > batch["fp32"][BATCHES[1]]
    )
    figures["shipped_precision"] = SHIPPED
    figures["rss_mb"] = round(rss_after / 2**20, 1)
    figures["rss_growth_mb"] = round((rss_after - rss_before) / 2**20, 1)
    click.echo(json.dumps(figures))
