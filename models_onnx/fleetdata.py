"""Sites for fleet jobs from SKAB-format folders: one folder a site, one CSV an episode,
split by file into train, selection and held-out parts (never by row: rows of one run are
not independent)."""

from __future__ import annotations

from pathlib import Path

from models_onnx.datasets import read_table
from models_onnx.errors import ModelError
from models_onnx.m2n2 import Episode, Site

__all__ = ["load_site", "split_counts"]


def split_counts(n: int) -> tuple[int, int, int]:
    """Files for (train, selection, held-out): half, a quarter, a quarter; at least one each."""
    if n < 3:
        raise ModelError(
            f"{n} labelled files; a site needs at least 3 (train, selection, held-out)"
        )
    held = max(1, n // 4)
    sel = max(1, n // 4)
    return n - sel - held, sel, held


def _order(p: Path) -> tuple[int, str]:
    return (int(p.stem), "") if p.stem.isdigit() else (1 << 30, p.stem)


def load_site(name: str, folder: Path, signals: list[str] | None = None) -> Site:
    """The site in ``folder``; ``signals`` (default: the first file's) fixes the column order."""
    episodes = []
    for path in sorted(folder.glob("*.csv"), key=_order):
        table = read_table(path)
        if table.labels is None:
            continue
        cols, x, y = list(table.signals), table.values, table.labels
        want = signals or cols
        if sorted(cols) != sorted(want):
            raise ModelError(f"{path}: signals {cols}, the site has {want}")
        signals = want
        order = [cols.index(s) for s in want]
        episodes.append(Episode(x[:, order], y, f"{name}/{path.name}"))
    if not episodes:
        raise ModelError(f"{folder}: no labelled CSV (an 'anomaly' column)", hint="label it")
    a, b, _ = split_counts(len(episodes))
    return Site(name, tuple(episodes[:a]), tuple(episodes[a : a + b]), tuple(episodes[a + b :]))
