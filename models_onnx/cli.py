"""``factoryops model``: build, evaluate and inspect the ONNX anomaly models."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import onnx
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from models_onnx.datasets import load_dataset, read_table
from models_onnx.errors import ModelError
from models_onnx.evaluate import (
    Counts,
    default_grid,
    evaluate_fixed,
    evaluate_nested,
    label_artefact,
)
from models_onnx.manifest import Manifest, load_model, sha256_file, write_manifest
from models_onnx.nab import NabCounts
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
    help=f"EWMA span smoothing the score over consecutive rows [pca: 5, others: {Recipe().span}].",
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
    default=Recipe().lags,
    show_default=True,
    help="Rows of history in the input of the twin / autoencoder / ensemble.",
)


def _recipe(kind: str, explained: float, quantile: float, span: int | None, lags: int) -> Recipe:
    if kind == "pca":
        return Recipe(
            kind="pca", explained=explained, pca_quantile=quantile, span=span or 5, lags=0
        )
    default = Recipe()
    return replace(default, kind=kind, span=span or default.span, lags=lags)


@click.group()
def model() -> None:
    """Anomaly models (PCA T2+Q, autoencoder, shadow twin, fusion): ONNX, int8, manifests."""


@model.command("build")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="CSV of normal operation to train on (';' or ',', any numeric columns).",
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
    table = read_table(path)
    return list(table.signals), table.values


@model.command("eval")
@click.option(
    "--dataset",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="A SKAB-style folder (labelled CSVs) or one in NAB's layout (data/, labels/).",
)
@click.option(
    "--outer",
    type=click.Choice(["file", "group"]),
    default="file",
    show_default=True,
    help="Leave one file out, or one sub-folder / NAB category out, when choosing settings.",
)
@click.option(
    "--kinds",
    default="twin,pca",
    show_default=True,
    help="Model kinds among the candidates of the inner loop.",
)
@click.option(
    "--fixed",
    is_flag=True,
    help="Also score one fixed recipe (the defaults, or --kind/--lags/--span) on every file.",
)
@_KIND
@_LAGS
@_EXPLAINED
@_QUANTILE
@_SPAN
def eval_cmd(
    dataset: Path,
    outer: str,
    kinds: str,
    fixed: bool,
    kind: str,
    lags: int,
    explained: float,
    quantile: float,
    span: int | None,
) -> None:
    """Nested evaluation: every setting chosen on the other files' labels, never the scored one's.

    Per file: each candidate (kind, lags, ridge, clip, level weight, span, limit rule) is
    scored on the *other* files (or sub-folders with --outer group); the best (pooled F1, or
    the NAB score for window labels) is built as fp32 and int8 ONNX on this file's training
    rows (SKAB: the first 400; NAB: the probationary 15 %) and scores the rest. The headline
    is that nested figure; the last line is one JSON object (fp32, int8; nab: the NAB
    figures of the fp32 model the gateway loads, nab_int8).

    \b
    Examples:
      factoryops model eval --dataset ../shared/datasets/skab
      factoryops model eval --dataset NAB/ --outer group
      factoryops model eval --dataset ../shared/datasets/skab --fixed --kind pca
    """
    series = load_dataset(dataset)
    grid = default_grid([k.strip() for k in kinds.split(",") if k.strip()])
    if not grid:
        raise ModelError(f"--kinds {kinds!r} names no kind with candidates (twin, pca)")
    console = Console()
    with console.status("scoring every candidate on every file") as status:
        result = evaluate_nested(series, grid, outer=outer, progress=status.update)
    if result.defaults_only:
        console.print(
            f"[yellow]one {outer} only: nothing to choose settings on; every file is scored "
            "with the shipped defaults (chosen on the visible SKAB files, not on these)[/yellow]"
        )
    chosen = "settings (defaults)" if result.defaults_only else "chosen on the other files"
    title = f"nested ({outer} out, {result.grid} candidates) on {dataset}"
    table = Table(title=title)
    for col in ("file", chosen, "F1 int8", "FAR %", "MAR %", "int8=fp32"):
        table.add_column(col, justify="left" if col in ("file", chosen) else "right")
    for o in result.outcomes:
        m = o.counts("int8").metrics
        table.add_row(
            o.series.name,
            o.recipe.label(),
            f"{m.f1:.3f}",
            f"{m.far:.1f}",
            f"{m.mar:.1f}",
            f"{100 * o.agreement:.1f} %",
        )
    console.print(table)
    figures: dict[str, object] = {}
    how = "defaults" if result.defaults_only else "nested"
    for name in ("fp32", "int8"):
        c = result.pooled(name)
        m = c.metrics
        console.print(
            f"[bold]{how}, {name}[/bold]: F1 {m.f1:.3f}, FAR {m.far:.1f} %, MAR {m.mar:.1f} %"
            + (f"; {_nab_text(c.nab)}" if c.nab.windows else "")
        )
        figures[name] = m.as_json()
    worst = min(o.agreement for o in result.outcomes)
    console.print(f"int8 and fp32 flag the same rows on >= {100 * worst:.2f} % of every file")
    artefact = label_artefact([(o.series, o.int8) for o in result.outcomes])
    if artefact is not None:
        after, pre_far = artefact
        console.print(
            f"of the int8 false alarms, {100 * after:.0f} % fall after the labelled fault "
            f"ended (on SKAB the label covers only the valve's closed period); FAR before "
            f"the fault {pre_far:.1f} %. Not tuned to: reported so the FAR can be read."
        )
    if result.tuned is not None:
        recipe, counts = result.tuned
        t = counts.metrics
        console.print(
            f"[dim]tuned (best candidate on all these files' labels, optimistic): "
            f"{recipe.label()}: F1 {t.f1:.3f}, FAR {t.far:.1f} %, MAR {t.mar:.1f} %[/dim]"
        )
        figures["tuned_fp32"] = t.as_json()
    if fixed:
        one = _recipe(kind, explained, quantile, span, lags)
        outs = evaluate_fixed(series, one)
        for name in ("fp32", "int8"):
            total = Counts()
            for o in outs:
                total = total + o.counts(name)
            fm = total.metrics
            console.print(
                f"fixed recipe {one.label()}, {name} (the defaults were chosen on the visible "
                f"SKAB files' labels: on those files a tuned figure): F1 {fm.f1:.3f}, "
                f"FAR {fm.far:.1f} %, MAR {fm.mar:.1f} %"
            )
            figures[f"fixed_{name}"] = fm.as_json()
    nab = result.pooled("fp32").nab
    if nab.windows:  # "nab" is the precision the gateway loads (docs/adr/0019-…)
        figures["nab"] = nab.as_json()
        figures["nab_int8"] = result.pooled("int8").nab.as_json()
    figures["nested"] = "defaults" if result.defaults_only else outer
    figures["files"] = len(series)
    click.echo(json.dumps(figures))


def _nab_text(n: NabCounts) -> str:
    return (
        f"window recall {n.window_recall:.2f}, event precision {n.event_precision:.2f}, "
        f"NAB standard score {n.standard_score:.1f}"
    )


@model.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="CSV of normal operation (the training rows) to calibrate on.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--clip",
    type=float,
    default=None,
    help="The graph's |z| clip bound in training sd [default: the manifest's recipe, or 8].",
)
def quantize(model_path: Path, calibration: Path, out: Path, clip: float | None) -> None:
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
    bound = clip or float((man.metrics.get("recipe", {}) if man else {}).get("clip", Recipe().clip))
    quantize_model(graph, stack_lags(x, lags), out, clip=bound)
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
      factoryops model inspect models/pump-twin.fp32.manifest.json
    """
    m = load_model(manifest)
    man = m.manifest
    click.echo(f"{man.id} v{man.version} ({man.kind}, {'int8' if man.quantized else 'fp32'})")
    click.echo(f"  file     {m.path} ({m.path.stat().st_size:,} bytes) sha256 {man.sha256} OK")
    click.echo(f"  signals  {', '.join(man.signals)}")
    click.echo(f"  input    {len(man.columns)} columns: x_t .. x_(t-{man.lags}), {man.lags} lags")
    click.echo(f"  trained  {man.training_rows} rows, data sha256 {man.training_sha256[:16]}…")
    click.echo(f"  alarm    smoothed score > {man.threshold} (EWMA span {man.smoothing_span})")
