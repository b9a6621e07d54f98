"""``factoryops bench m2n2``: M2N2 merged fleet model vs the best single-site model vs plain
parameter averaging, F1 on every site's held-out files (SKAB protocol per file).

Sites: SKAB ``valve1`` and ``valve2`` (real test-bed data; ``other`` when present) and three
SIMULATED pump variants (hil_tests/pump_variants.py). Every site is split by file into
train (its own model), selection (M2N2's fitness, and the choice of the best single model)
and held-out (only the final figures). A seed draws the pump variants' runs, the site
models' start and M2N2's choices; ``--seeds 0-7`` repeats the whole run per seed and adds
the spread and a paired comparison over seeds and sites. The last line is one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from hil_tests.plant import SIGNALS
from hil_tests.pump_variants import VARIANTS, write_variant
from models_onnx.fleetdata import load_site
from models_onnx.m2n2 import (
    Comparison,
    M2N2Config,
    NetShape,
    Site,
    compare,
    diagnose,
    merge,
    train_site_model,
)

__all__ = ["command", "fleet_sites", "parse_seeds", "summarise"]

MODELS = ("merged", "best_single", "averaged")


def fleet_sites(skab: Path, work: Path, *, seed: int = 0) -> tuple[list[Site], list[str]]:
    """The bench's sites (pump variants written under ``work``), and SKAB folders absent."""
    signals = list(SIGNALS)
    sites, absent = [], []
    for name in ("valve1", "valve2", "other"):
        if (skab / name).is_dir():
            sites.append(load_site(name, skab / name, signals))
        else:
            absent.append(name)
    for name in VARIANTS:
        write_variant(work / name, name, seed=seed)
        sites.append(load_site(name, work / name, signals))
    return sites, absent


def parse_seeds(text: str) -> list[int]:
    """``"3"``, ``"0-7"`` or ``"0,2,5"`` (mixed too) as a list of distinct seeds."""
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give seeds as 3, 0-7 or 0,2,5") from None
    if not out or len(set(out)) != len(out):
        raise click.BadParameter(f"{text!r}: no seeds, or a seed twice")
    return out


def _table(c: Comparison, sites: list[Site], seed: int) -> Table:
    table = Table(title=f"seed {seed}: held-out F1 per site (SKAB protocol per file)")
    table.add_column("model")
    for s in sites:
        table.add_column(s.name, justify="right")
    table.add_column("mean", justify="right")
    for label, (mean, per) in (
        ("merged (M2N2)", c.merged),
        (f"best single ({c.best_single_site})", c.best_single),
        ("parameter average", c.averaged),
        ("each site's own model", (sum(c.own.values()) / len(c.own), c.own)),
    ):
        table.add_row(label, *(f"{per[s.name]:.3f}" for s in sites), f"{mean:.3f}")
    return table


def run_seed(skab: Path, base: M2N2Config, console: Console) -> dict[str, Any]:
    """One whole run (sites, site models, merge, comparison, diagnosis) for ``base.seed``."""
    shape, cfg = NetShape(len(SIGNALS)), base
    with tempfile.TemporaryDirectory() as tmp:
        sites, absent = fleet_sites(skab, Path(tmp), seed=cfg.seed)
    started = time.perf_counter()
    singles = {s.name: train_site_model(s, shape, seed=cfg.seed) for s in sites}
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    result = merge(sites, list(singles.values()), shape, cfg)
    merge_s = time.perf_counter() - started
    c = compare(sites, result.best, singles, shape, cfg)
    console.print(_table(c, sites, cfg.seed))
    return {
        **c.as_json(),
        "seed": cfg.seed,
        "why": diagnose(sites, result, singles, shape, cfg),
        "files": {s.name: [len(s.train), len(s.selection), len(s.held_out)] for s in sites},
        "absent_sites": absent,
        "generations": cfg.generations,
        "archive_size": cfg.archive_size,
        "children_accepted": result.accepted,
        "selection_accuracy_first_last": [round(result.history[i], 4) for i in (0, -1)],
        "train_s": round(train_s, 1),
        "merge_s": round(merge_s, 1),
        "seed_average": cfg.seed_average,
        "pick_on_train": cfg.pick_on_train,
        "site_capacity": cfg.site_capacity,
    }


def _paired(diffs: list[float]) -> dict[str, Any]:
    """Merged minus a baseline, paired: mean, sd, wins/losses, two-sided p of a sign-rank
    test and of a t-test (None when every difference is zero)."""
    d = np.asarray(diffs)
    nonzero = bool(np.any(d != 0))
    return {
        "n": len(d),
        "mean": round(float(d.mean()), 4),
        "sd": round(float(d.std(ddof=1)), 4) if len(d) > 1 else None,
        "merged_higher": int((d > 0).sum()),
        "merged_lower": int((d < 0).sum()),
        "p_wilcoxon": round(float(stats.wilcoxon(d).pvalue), 4) if nonzero else None,
        "p_t": round(float(stats.ttest_1samp(d, 0.0).pvalue), 4) if nonzero else None,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds, per site means, how often merged beats each baseline, and
    the paired comparison per seed (mean over sites) and per seed and site."""
    key = {"merged": "merged_score", "best_single": "best_single_score"}
    key["averaged"] = "averaged_score"
    scores = {m: [float(r[key[m]]) for r in runs] for m in MODELS}
    sd = {m: round(statistics.stdev(v), 4) if len(v) > 1 else 0.0 for m, v in scores.items()}
    sites = list(runs[0]["per_site"])
    per_site = {
        s: {m: round(statistics.fmean(r["per_site"][s][m] for r in runs), 4) for m in MODELS}
        for s in sites
    }
    paired: dict[str, Any] = {}
    for base in ("best_single", "averaged"):
        paired[base] = {
            "per_seed": _paired(
                [a - b for a, b in zip(scores["merged"], scores[base], strict=True)]
            ),
            "per_seed_and_site": _paired(
                [r["per_site"][s]["merged"] - r["per_site"][s][base] for r in runs for s in sites]
            ),
        }
    return {
        "seeds": [r["seed"] for r in runs],
        **{key[m]: round(statistics.fmean(v), 4) for m, v in scores.items()},
        **{f"{m}_sd": sd[m] for m in MODELS},
        "merged_beats_both": statistics.fmean(scores["merged"])
        > max(statistics.fmean(scores["best_single"]), statistics.fmean(scores["averaged"])),
        "seeds_beating_both": sum(bool(r["merged_beats_both"]) for r in runs),
        "seeds_beating_best_single": sum(bool(r["beats_best_single"]) for r in runs),
        "seeds_beating_average": sum(bool(r["beats_average"]) for r in runs),
        "selection_scores": {
            m: round(statistics.fmean(r["selection_scores"][m] for r in runs), 4) for m in MODELS
        },
        "per_site": per_site,
        "paired": paired,
    }


def _summary_table(runs: list[dict[str, Any]], summary: dict[str, Any]) -> Table:
    table = Table(title="mean held-out F1 over sites, per seed")
    for col in ("seed", "merged", "best single", "average", "beats both", "selection: merged"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            str(r["seed"]),
            *(f"{r[k]:.4f}" for k in ("merged_score", "best_single_score", "averaged_score")),
            "yes" if r["merged_beats_both"] else "no",
            f"{r['selection_scores']['merged']:.4f}",
        )
    table.add_row(
        "mean ± sd",
        *(f"{summary[f'{m}_score']:.4f} ± {summary[f'{m}_sd']:.4f}" for m in MODELS),
        f"{summary['seeds_beating_both']} of {len(runs)}",
        f"{summary['selection_scores']['merged']:.4f}",
    )
    return table


@click.command()
@click.option(
    "--skab",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("../shared/datasets/skab"),
    show_default=True,
)
@click.option("--generations", default=300, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--archive", "archive_size", default=8, show_default=True, type=click.IntRange(2, 64))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--seeds",
    default=None,
    callback=lambda _ctx, _param, v: None if v is None else parse_seeds(v),
    help="Several seeds (0-7 or 0,2,5): adds the spread.",
)
@click.option(
    "--paper-only",
    is_flag=True,
    help="Without our two additions (the average as a seed, the pick on train+selection).",
)
@click.option(
    "--point-capacity",
    is_flag=True,
    help="Capacity 1 per selection point (the reference), not the same total per site.",
)
def command(
    skab: Path,
    generations: int,
    archive_size: int,
    seed: int,
    seeds: list[int] | None,
    paper_only: bool,
    point_capacity: bool,
) -> None:
    """Merge per-site autoencoders with M2N2 and score them on held-out files.

    \b
    Example:
      factoryops bench m2n2 --generations 300
      factoryops bench m2n2 --seeds 0-7
    """
    console = Console(stderr=True)
    base = M2N2Config(
        archive_size=archive_size, generations=generations, seed=seed,
        seed_average=not paper_only, pick_on_train=not paper_only, site_capacity=not point_capacity,
    )  # fmt: skip
    chosen = seeds or [seed]
    runs = [run_seed(skab, dataclasses.replace(base, seed=s), console) for s in chosen]
    if len(runs) == 1:
        print(json.dumps(runs[0]))
        return
    summary = summarise(runs)
    console.print(_summary_table(runs, summary))
    print(json.dumps({**summary, "per_seed": runs}))
