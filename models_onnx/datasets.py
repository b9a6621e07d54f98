"""Read any plant's CSV and labelled folders (SKAB-style or NAB's own layout) into series.

A CSV is ``;``- or ``,``-separated with a header row; one timestamp column (``datetime``,
``timestamp``, ``time``, ``date`` or ``ts``: ISO 8601, ``dd/mm/yyyy HH:MM[:SS]`` or epoch
seconds / milliseconds) is optional; a label column (``anomaly``, ``label``, ``is_anomaly``)
is optional; ``changepoint`` is ignored; every other column is a numeric signal (one is
enough: the twin then predicts it from its own lags). An empty cell takes the value above it.
A folder holding ``labels/combined_windows.json`` is read as NAB lays it out (series under
``data/<category>/*.csv``, windows keyed ``<category>/<file>.csv``; entries whose file is
absent are skipped, so a part of the corpus evaluates with NAB's full window file); any other
folder as SKAB's (every CSV under it with a label column).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models_onnx.errors import ModelError

__all__ = [
    "MAX_COLUMNS",
    "MAX_ROWS",
    "SKAB_TRAIN_ROWS",
    "Series",
    "Table",
    "load_dataset",
    "nab_probation",
    "parse_time",
    "read_table",
]

F = NDArray[np.float64]
B = NDArray[np.bool_]
MAX_ROWS = 5_000_000  # a year of 1 Hz readings is 31.5 M; a file to evaluate is far smaller
MAX_COLUMNS = 1024
SKAB_TRAIN_ROWS = 400  # the SKAB outlier-detection protocol: fit on the first 400 rows
TIME_COLUMNS = ("datetime", "timestamp", "time", "date", "ts")
LABEL_COLUMNS = ("anomaly", "label", "is_anomaly")
IGNORED_COLUMNS = ("changepoint",)
NAB_WINDOWS = Path("labels") / "combined_windows.json"
_TIME_FORMATS = ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d.%m.%Y %H:%M:%S", "%Y/%m/%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class Table:
    """One CSV: its signals, values (rows x signals), labels and timestamps when present."""

    signals: tuple[str, ...]
    values: F
    labels: B | None
    timestamps: F | None  # epoch seconds


@dataclass(frozen=True, slots=True)
class Series:
    """A labelled series to evaluate: fit on ``train_rows`` first rows, score the rest."""

    name: str  # path relative to the dataset folder
    group: str  # the sub-folder (SKAB) or category (NAB): the unit of grouped evaluation
    table: Table
    truth: B  # per row: inside a labelled anomaly (or a NAB window)
    windows: tuple[tuple[int, int], ...] | None  # NAB: inclusive row ranges of each window
    train_rows: int


def parse_time(text: str) -> float:
    """Epoch seconds of a timestamp in a common form (naive times are taken as UTC)."""
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(v):
            raise ValueError(f"timestamp {text!r} is not finite")
        return v / 1000.0 if abs(v) > 1e11 else v  # epoch milliseconds past ~5138 AD seconds
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        for fmt in _TIME_FORMATS:
            try:
                dt = datetime.strptime(t, fmt)  # naive on purpose: UTC below
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"timestamp {text!r} is in no known form") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def read_table(path: Path) -> Table:
    """Read one CSV (see the module docstring); errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: cannot read ({err})") from err
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ModelError(f"{path}: empty file, expected a header row")
    if len(lines) - 1 > MAX_ROWS:
        raise ModelError(f"{path}: {len(lines) - 1:,} rows, the limit is {MAX_ROWS:,}")
    sep = ";" if lines[0].count(";") >= lines[0].count(",") and ";" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=sep))
    header = [h.strip() for h in rows[0]]
    if len(header) > MAX_COLUMNS:
        raise ModelError(f"{path}:1: {len(header)} columns, the limit is {MAX_COLUMNS}")
    low = [h.lower() for h in header]
    t_col = next((low.index(c) for c in TIME_COLUMNS if c in low), None)
    y_col = next((low.index(c) for c in LABEL_COLUMNS if c in low), None)
    skip = {t_col, y_col, *(i for i, h in enumerate(low) if h in IGNORED_COLUMNS)}
    cols = [i for i in range(len(header)) if i not in skip]
    if not cols:
        raise ModelError(f"{path}:1: no signal column in the header {sep.join(header)!r}")
    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    x = np.full((len(body), len(cols)), np.nan)
    y = np.zeros(len(body), dtype=np.bool_)
    ts = np.zeros(len(body))
    for k, (line, r) in enumerate(body):
        if len(r) != len(header):
            raise ModelError(f"{path}:{line}: {len(r)} fields, the header has {len(header)}")
        for j, c in enumerate(cols):
            cell = r[c].strip()
            if cell:
                x[k, j] = _number(path, line, header[c], cell)
        if y_col is not None:
            y[k] = _number(path, line, header[y_col], r[y_col].strip() or "0") > 0.5
        if t_col is not None:
            try:
                ts[k] = parse_time(r[t_col])
            except ValueError as err:
                raise ModelError(f"{path}:{line}: column {header[t_col]!r}: {err}") from err
    return Table(
        tuple(header[i] for i in cols),
        _fill(x),
        y if y_col is not None else None,
        ts if t_col is not None else None,
    )


def _number(path: Path, line: int, column: str, cell: str) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise ModelError(f"{path}:{line}: column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise ModelError(f"{path}:{line}: column {column!r}: {cell!r} is not finite")
    return v


def _fill(x: F) -> F:
    """An empty cell takes the last value above it (the first ones the first value below)."""
    if not np.isnan(x).any():
        return x
    idx = np.where(np.isnan(x), 0, np.arange(len(x))[:, None])
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = x[idx, np.arange(x.shape[1])]
    for j in range(out.shape[1]):
        col = out[:, j]
        seen = ~np.isnan(col)
        if seen.any():
            col[~seen] = col[seen][0]
        else:
            col[:] = 0.0  # a column with no value at all: constant, carries nothing
    return out


def nab_probation(rows: int) -> int:
    """NAB's probationary period: the first 15 % of a series, at most 750 rows."""
    return int(min(math.floor(0.15 * rows), 0.15 * 5000))


def load_dataset(folder: Path, *, train_rows: int = SKAB_TRAIN_ROWS) -> list[Series]:
    """Every labelled series under ``folder`` (NAB layout when it has NAB's window file)."""
    if (folder / NAB_WINDOWS).is_file():
        return _load_nab(folder)
    out = []
    for path in sorted(folder.rglob("*.csv")):
        table = read_table(path)
        if table.labels is None or len(table.values) <= train_rows:
            continue  # nothing to score against (SKAB's anomaly-free.csv)
        rel = path.relative_to(folder)
        group = str(rel.parent) if rel.parent != Path() else ""
        out.append(Series(str(rel), group, table, table.labels, None, train_rows))
    if not out:
        raise ModelError(
            f"no CSV with a label column ({', '.join(LABEL_COLUMNS)}) under {folder}",
            hint=f"or give windows in NAB's layout ({NAB_WINDOWS}, data/<category>/*.csv)",
        )
    return out


def _load_nab(folder: Path) -> list[Series]:
    src = folder / NAB_WINDOWS
    try:
        doc = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{src}: not a JSON file of windows ({err})") from err
    if not isinstance(doc, dict):
        raise ModelError(f"{src}: expected an object of file -> [[start, end], ...]")
    root = folder / "data" if (folder / "data").is_dir() else folder
    out = []
    for key, spans in sorted(doc.items()):
        path = root / key
        if not path.is_file():
            continue  # NAB's window file names the whole corpus; a copy may hold a part of it
        if not isinstance(spans, list):
            raise ModelError(f"{src}: {key}: expected a list of [start, end] pairs")
        table = read_table(path)
        if table.timestamps is None:
            raise ModelError(f"{path}:1: no timestamp column ({', '.join(TIME_COLUMNS)})")
        windows = []
        for k, span in enumerate(spans):
            try:
                lo, hi = (parse_time(str(v)) for v in span)
            except (TypeError, ValueError) as err:
                raise ModelError(f"{src}: {key}[{k}]: not a [start, end] pair ({err})") from err
            inside = np.flatnonzero((table.timestamps >= lo) & (table.timestamps <= hi))
            if len(inside):
                windows.append((int(inside[0]), int(inside[-1])))
        truth = np.zeros(len(table.values), dtype=np.bool_)
        for lo_i, hi_i in windows:
            truth[lo_i : hi_i + 1] = True
        probation = nab_probation(len(table.values))
        group = str(Path(key).parent)
        out.append(Series(key, group, table, truth, tuple(windows), probation))
    if not out:
        raise ModelError(f"{src}: none of its {len(doc)} series is a file under {root}")
    return out
