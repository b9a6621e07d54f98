"""``factoryops model``: build, evaluate and inspect the ONNX anomaly models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np
import onnx
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models_onnx.errors import ModelError
from models_onnx.evaluate import evaluate_folder
from models_onnx.manifest import Manifest, load_model, sha256_file, write_manifest
from models_onnx.recipes import KINDS, Recipe, build, quantize_model
from models_onnx.scoring import stack_lags

__all__ = ["model"]

_EXPLAINED = click.option(
    "--explained",
    type=float,
    default=0.85,
    show_default=True,
    help="Variance the kept principal components must explain.",
)
_QUANTILE = click.option(
    "--quantile",
    type=float,
    default=0.99,
    show_default=True,
    help="Training-score quantile taken as each limit (T2, Q).",
)
_SPAN = click.option(
    "--span",
    type=int,
    default=None,
    help="EWMA span smoothing the score over consecutive rows [pca: 5, others: 10].",
)
_KIND = click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="twin",
    show_default=True,
    help="pca (T2+Q), autoencoder, twin (shadow-twin residuals) or ensemble (twin + AE).",
)
_LAGS = click.option(
    "--lags",
    type=click.IntRange(0, 16),
    default=2,
    show_default=True,
    help="Rows of history in the input of the twin / autoencoder / ensemble.",
)


def _recipe(kind: str, explained: float, quantile: float, span: int | None, lags: int) -> Recipe:
    if kind == "pca":
        return Recipe(
            kind="pca", explained=explained, pca_quantile=quantile, span=span or 5, lags=0
        )
    return Recipe(kind=kind, span=span or 10, lags=lags)


@click.group()
def model() -> None:
    """Anomaly models (PCA T2+Q, autoencoder, shadow twin, fusion): ONNX, int8, manifests."""


@model.command("build")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="SKAB-format CSV of normal operation to train on.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--id", "model_id", default=None, help="Model id [default: pump-KIND].")
@_KIND
@_LAGS
@_EXPLAINED
@_QUANTILE
@_SPAN
def build_cmd(
    csv_path: Path,
    out: Path,
    model_id: str | None,
    kind: str,
    lags: int,
    explained: float,
    quantile: float,
    span: int | None,
) -> None:
    """Train one model kind; write fp32 and int8 ONNX files with their manifests.

    \b
    Examples:
      factoryops sim dataset --seconds 600 --out normal.csv && \
        factoryops model build --csv normal.csv --out models/
      factoryops model build --kind pca --out m/ \
        --csv ../shared/datasets/skab/anomaly-free/anomaly-free.csv
    """
    signals, x = _read_training_csv(csv_path)
    recipe = _recipe(kind, explained, quantile, span, lags)
    fp32, int8 = build(recipe, x, signals, out, model_id=model_id or f"pump-{kind}")
    click.echo(f"trained {kind} on {len(x)} rows x {len(signals)} signals\n  {fp32}\n  {int8}")


def _read_training_csv(path: Path) -> tuple[list[str], NDArray[np.float64]]:
    import csv  # noqa: PLC0415

    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    header = rows[0]
    cols = [i for i, h in enumerate(header) if h not in ("datetime", "anomaly", "changepoint")]
    try:
        x = np.array([[float(r[i]) for i in cols] for r in rows[1:]])
    except (ValueError, IndexError) as err:
        raise ModelError(f"{path}: unreadable row ({err})") from err
    return [header[i] for i in cols], x


@model.command("eval")
@click.option(
    "--dataset",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Folder searched recursively for SKAB-format CSVs.",
)
@_KIND
@_LAGS
@_EXPLAINED
@_QUANTILE
@_SPAN
def eval_cmd(
    dataset: Path, kind: str, lags: int, explained: float, quantile: float, span: int | None
) -> None:
    """SKAB protocol: per file fit on the first 400 rows, score the rest; pooled F1/FAR/MAR.

    fp32 and int8 side by side per file and pooled; the last line is one JSON object.

    \b
    Examples:
      factoryops model eval --dataset ../shared/datasets/skab
      factoryops model eval --dataset ../shared/datasets/skab --kind pca
    """
    recipe = _recipe(kind, explained, quantile, span, lags)
    console = Console()
    total = len(list(dataset.rglob("*.csv")))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=total)
        results, fp32, int8 = evaluate_folder(
            dataset,
            recipe,
            progress=lambda p: bar.update(task, advance=1, description=p.name),
        )
    table = Table(title=f"SKAB protocol, {kind}, on {dataset} ({len(results)} files)")
    for col in (
        "file",
        "rows",
        "F1 fp32",
        "FAR fp32",
        "MAR fp32",
        "F1 int8",
        "FAR int8",
        "MAR int8",
    ):
        table.add_column(col, justify="left" if col == "file" else "right")
    for r in results:
        table.add_row(
            str(r.path.relative_to(dataset)),
            str(r.rows),
            f"{r.fp32.f1:.3f}",
            f"{r.fp32.far:.1f}",
            f"{r.fp32.mar:.1f}",
            f"{r.int8.f1:.3f}",
            f"{r.int8.far:.1f}",
            f"{r.int8.mar:.1f}",
        )
    table.add_row(
        "pooled",
        "",
        f"{fp32.f1:.3f}",
        f"{fp32.far:.1f}",
        f"{fp32.mar:.1f}",
        f"{int8.f1:.3f}",
        f"{int8.far:.1f}",
        f"{int8.mar:.1f}",
        style="bold",
    )
    console.print(table)
    click.echo(json.dumps({"fp32": fp32.as_json(), "int8": int8.as_json()}))


@model.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="SKAB-format CSV of normal operation (the training rows) to calibrate on.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--headroom",
    type=float,
    default=4.0,
    show_default=True,
    help="Calibration also sees the rows stretched this much about their mean (1 = off).",
)
def quantize(model_path: Path, calibration: Path, out: Path, headroom: float) -> None:
    """Static int8 (QDQ) quantisation of an fp32 ONNX model, calibrated on a CSV.

    The signal order and lag count come from MODEL's manifest (MODEL with .onnx replaced by
    .manifest.json) when there is one, and an int8 manifest is written beside OUT; without a
    manifest the CSV's columns are taken in order and the lags from the model's input width.

    \b
    Example:
      factoryops model quantize models/pump-twin.fp32.onnx --calibration normal.csv \
        --out models/pump-twin.int8b.onnx
    """
    signals, x = _read_training_csv(calibration)
    graph = onnx.load(model_path)
    width = graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    src_manifest = model_path.with_name(model_path.name.removesuffix(".onnx") + ".manifest.json")
    man: Manifest | None = load_model(src_manifest).manifest if src_manifest.exists() else None
    order = list(man.signals) if man else signals
    missing = [s for s in order if s not in signals]
    if missing:
        raise ModelError(f"{calibration} lacks the model's signals {', '.join(missing)}")
    x = x[:, [signals.index(s) for s in order]]
    lags = man.lags if man else width // len(order) - 1
    if width != len(order) * (lags + 1):
        raise ModelError(
            f"{model_path} takes {width} input columns, not {len(order)} signals x {lags + 1}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_model(graph, stack_lags(x, lags), out, headroom=headroom)
    click.echo(f"{out} ({out.stat().st_size:,} bytes, fp32 {model_path.stat().st_size:,})")
    if man is not None:
        dest = out.with_name(out.name.removesuffix(".onnx") + ".manifest.json")
        write_manifest(
            dest,
            dataclasses.replace(man, onnx_file=out.name, sha256=sha256_file(out), quantized=True),
        )
        click.echo(f"{dest}")


@model.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect(manifest: Path) -> None:
    """Check a manifest and its ONNX file's hash; print what the agent would load.

    \b
    Example:
      factoryops model inspect models/pump-pca.int8.manifest.json
    """
    m = load_model(manifest)
    man = m.manifest
    click.echo(f"{man.id} v{man.version} ({man.kind}, {'int8' if man.quantized else 'fp32'})")
    click.echo(f"  file     {m.path} ({m.path.stat().st_size:,} bytes) sha256 {man.sha256} OK")
    click.echo(f"  signals  {', '.join(man.signals)}")
    click.echo(f"  input    {len(man.columns)} columns: x_t .. x_(t-{man.lags}), {man.lags} lags")
    click.echo(f"  trained  {man.training_rows} rows, data sha256 {man.training_sha256[:16]}…")
    click.echo(f"  alarm    smoothed score > {man.threshold} (EWMA span {man.smoothing_span})")


@model.command("eval-lofo")
@click.option(
    "--dataset",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Folder searched recursively for SKAB-format CSVs.",
)
@click.option(
    "--kind",
    type=click.Choice(["twin", "autoencoder", "ensemble", "pca"]),
    default="twin",
    show_default=True,
)
@click.option(
    "--lags", "lag_grid", default="0,1,2,3", show_default=True, help="Lags to choose from."
)
@click.option(
    "--spans", "span_grid", default="5,10,20", show_default=True, help="EWMA spans to choose from."
)
def eval_lofo(dataset: Path, kind: str, lag_grid: str, span_grid: str) -> None:
    """SKAB protocol with the settings chosen leave-one-file-out (no file's labels pick its own).

    For every file, each candidate (lags x span) is scored on all the other files; the best
    (pooled fp32 F1) scores this file. Pooled fp32 and int8 of those choices; last line JSON.

    \b
    Example:
      factoryops model eval-lofo --dataset ../shared/datasets/skab --kind twin
    """
    from models_onnx.evaluate import evaluate_lofo  # noqa: PLC0415
    from models_onnx.recipes import Recipe  # noqa: PLC0415

    lags = [int(v) for v in lag_grid.split(",")]
    spans = [int(v) for v in span_grid.split(",")]
    grid = [Recipe(kind=kind, lags=lg, span=sp) for lg in lags for sp in spans]
    console = Console()
    with console.status("building every candidate on every file") as status:
        result = evaluate_lofo(dataset, grid, progress=status.update)
    table = Table(title=f"candidates on all files (int8), {kind}")
    for col in ("lags", "span", "F1", "FAR %", "MAR %"):
        table.add_column(col, justify="right")
    for recipe, m in result.grid:
        table.add_row(
            str(recipe.lags), str(recipe.span), f"{m.f1:.3f}", f"{m.far:.1f}", f"{m.mar:.1f}"
        )
    console.print(table)
    picked = sorted({(r.lags, r.span) for _, r in result.chosen})
    console.print(f"settings chosen leave-one-file-out (lags, span): {picked}")
    for name, m in (("fp32", result.fp32), ("int8", result.int8)):
        console.print(
            f"[bold]pooled, leave-one-file-out, {name}[/bold]: F1 {m.f1:.3f}, "
            f"FAR {m.far:.1f} %, MAR {m.mar:.1f} %"
        )
    click.echo(json.dumps({"fp32": result.fp32.as_json(), "int8": result.int8.as_json()}))
