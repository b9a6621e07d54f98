"""``factoryops model``: build, evaluate and inspect the ONNX anomaly models."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models_onnx.errors import ModelError
from models_onnx.evaluate import evaluate_folder
from models_onnx.manifest import load_model
from models_onnx.recipes import build_pca

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
    default=5,
    show_default=True,
    help="EWMA span smoothing the score over consecutive rows.",
)


@click.group()
def model() -> None:
    """Anomaly models: PCA T2+Q exported to ONNX, quantised to int8, with manifests."""


@model.command()
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="SKAB-format CSV of normal operation to train on.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--id", "model_id", default="pump-pca", show_default=True)
@_EXPLAINED
@_QUANTILE
@_SPAN
def build(
    csv_path: Path,
    out: Path,
    model_id: str,
    explained: float,
    quantile: float,
    span: int,
) -> None:
    """Train a PCA T2+Q model; write fp32 and int8 ONNX files with their manifests.

    \b
    Examples:
      factoryops sim dataset --seconds 600 --out normal.csv && \
        factoryops model build --csv normal.csv --out models/
      factoryops model build --csv ../shared/datasets/skab/anomaly-free/anomaly-free.csv --out m/
    """
    signals, x = _read_training_csv(csv_path)
    fp32, int8 = build_pca(
        x,
        signals,
        out,
        model_id=model_id,
        explained=explained,
        quantile=quantile,
        smoothing_span=span,
    )
    click.echo(f"trained on {len(x)} rows x {len(signals)} signals\n  {fp32}\n  {int8}")


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
@_EXPLAINED
@_QUANTILE
@_SPAN
def eval_cmd(dataset: Path, explained: float, quantile: float, span: int) -> None:
    """SKAB protocol: per file fit on the first 400 rows, score the rest; pooled F1/FAR/MAR.

    \b
    Example:
      factoryops model eval --dataset ../shared/datasets/skab
    """
    console = Console()
    total = len(list(dataset.rglob("*.csv")))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=total)
        results, fp32, int8 = evaluate_folder(
            dataset,
            explained=explained,
            quantile=quantile,
            span=span,
            progress=lambda p: bar.update(task, advance=1, description=p.name),
        )
    table = Table(title=f"SKAB protocol on {dataset} ({len(results)} files)")
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
    click.echo(f"  trained  {man.training_rows} rows, data sha256 {man.training_sha256[:16]}…")
    click.echo(f"  alarm    smoothed score > {man.threshold} (EWMA span {man.smoothing_span})")
