"""Reader for SKAB-format CSV files: ``;``-separated, datetime, the 8 signals, optional labels.

Yields one ``SkabRow`` per line in file order; a bad row raises ``SkabFormatError`` naming
the file and line, so a replay never serves a half-read value.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from hil_tests.errors import SkabFormatError
from hil_tests.plant import SIGNALS

__all__ = ["LABELS", "SkabLimits", "SkabRow", "read_skab"]

LABELS = ("anomaly", "changepoint")  # SKAB's optional 0/1 label columns
_HINT = (
    "SKAB files are ;-separated with a header 'datetime;Accelerometer1RMS;...;"
    "Volume Flow RateRMS' and optional 'anomaly;changepoint' columns"
)


@dataclass(frozen=True, slots=True)
class SkabLimits:
    """What the reader accepts; past these it stops with an error naming the line."""

    # the largest SKAB file has a few thousand one-second rows; a day at 1 Hz is 86,400
    max_rows: int = 1_000_000
    # a SKAB line is about 120 characters; this bounds memory on a file that is not CSV
    max_line_chars: int = 4096


@dataclass(frozen=True, slots=True)
class SkabRow:
    """One line: its number in the file (header = 1), timestamp, values and labels."""

    line: int
    ts: dt.datetime
    values: Mapping[str, float]
    anomaly: int | None = None
    changepoint: int | None = None


def read_skab(path: Path, limits: SkabLimits | None = None) -> Iterator[SkabRow]:
    """Yield the rows of a SKAB-format CSV in file order; raise on the first bad line."""
    lim = limits or SkabLimits()
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise SkabFormatError(
            f"cannot read {path}: {err.strerror}", hint="check the path passed to --replay"
        ) from err
    with fh:
        lines = _bounded_lines(fh, path, lim)
        reader = csv.reader(lines, delimiter=";")
        try:
            first = next(reader, None)
        except csv.Error as err:
            raise SkabFormatError(f"{path}:1: {err}", hint=_HINT) from err
        if first is None:
            raise SkabFormatError(f"{path}:1: the file is empty", hint=_HINT)
        header = [h.strip() for h in first]
        missing = [s for s in ("datetime", *SIGNALS) if s not in header]
        if missing:
            raise SkabFormatError(f"{path}:1: missing columns {missing}", hint=_HINT)
        col = {name: i for i, name in enumerate(header)}
        n = 0
        while True:
            try:
                row = next(reader, None)
            except csv.Error as err:  # e.g. a NUL byte: not text a CSV reader accepts
                raise SkabFormatError(f"{path}:{reader.line_num}: {err}", hint=_HINT) from err
            if row is None:
                return
            n += 1
            if n > lim.max_rows:
                raise SkabFormatError(
                    f"{path}:{reader.line_num}: more than {lim.max_rows} rows (SkabLimits.max_rows)"
                )
            # line_num counts physical lines, so a quoted newline cannot shift the number
            yield _parse_row(path, reader.line_num, row, header, col)


def _bounded_lines(fh: Iterator[str], path: Path, lim: SkabLimits) -> Iterator[str]:
    for n, text in enumerate(fh, start=1):
        if len(text) > lim.max_line_chars:
            raise SkabFormatError(
                f"{path}:{n}: line longer than {lim.max_line_chars} characters "
                "(SkabLimits.max_line_chars)",
                hint=_HINT,
            )
        yield text


def _parse_row(
    path: Path, line: int, row: list[str], header: list[str], col: dict[str, int]
) -> SkabRow:
    where = f"{path}:{line}"
    if len(row) != len(header):
        raise SkabFormatError(f"{where}: {len(row)} fields, expected {len(header)}", hint=_HINT)
    raw_ts = row[col["datetime"]].strip()
    try:
        ts = dt.datetime.fromisoformat(raw_ts)
    except ValueError:
        raise SkabFormatError(
            f"{where}: datetime {raw_ts!r} is not 'YYYY-MM-DD HH:MM:SS'"
        ) from None
    values: dict[str, float] = {}
    for name in SIGNALS:
        values[name] = _number(where, name, row[col[name]])
    labels: dict[str, int | None] = {}
    for name in LABELS:
        if name not in col:
            labels[name] = None
            continue
        v = _number(where, name, row[col[name]])
        if v not in (0.0, 1.0):
            raise SkabFormatError(f"{where}: {name} is {v}, expected 0 or 1")
        labels[name] = int(v)
    return SkabRow(line, ts, values, labels["anomaly"], labels["changepoint"])


def _number(where: str, column: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise SkabFormatError(f"{where}: {column} is {text!r}, not a number") from None
    if not math.isfinite(v):
        raise SkabFormatError(f"{where}: {column} is {text!r}, not a finite number")
    return v
