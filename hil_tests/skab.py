"""Reader for SKAB-format CSV files (``;``-separated: datetime, 8 signals, optional labels).

Rows come back as values per signal; a bad row raises ``HilError`` naming file and line.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hil_tests.errors import HilError
from hil_tests.plant import SIGNALS

__all__ = ["SkabRow", "read_skab"]


@dataclass(frozen=True, slots=True)
class SkabRow:
    line: int
    ts: dt.datetime
    values: dict[str, float]
    anomaly: int | None


def read_skab(path: Path) -> Iterator[SkabRow]:
    """Yield the rows of a SKAB-format CSV, naming the file and line of any bad row."""
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise HilError(f"cannot read {path}: {err.strerror}") from err
    with fh:
        reader = csv.reader(fh, delimiter=";")
        header = next(reader, None)
        missing = [s for s in ("datetime", *SIGNALS) if header is None or s not in header]
        if missing:
            raise HilError(
                f"{path}:1: not a SKAB file, missing columns {missing}",
                hint="SKAB files are ;-separated with a datetime column first",
            )
        assert header is not None
        col = {name: i for i, name in enumerate(header)}
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise HilError(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
            try:
                ts = dt.datetime.fromisoformat(row[col["datetime"]])
                values = {s: float(row[col[s]]) for s in SIGNALS}
            except ValueError as err:
                raise HilError(f"{path}:{line}: {err}") from err
            if not all(math.isfinite(v) for v in values.values()):
                raise HilError(f"{path}:{line}: non-finite value")
            anomaly = int(float(row[col["anomaly"]])) if "anomaly" in col else None
            yield SkabRow(line, ts, values, anomaly)
