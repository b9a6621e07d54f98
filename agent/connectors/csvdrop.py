"""CSV drop folder (ERP/MES extracts): every file ingested exactly once, bad rows quarantined.

```toml
[[csv]]
name = "erp"
folder = "drop/erp"            # relative to the config file
pattern = "*.csv"
timestamp_column = "time"
timestamp_format = "iso8601"   # or "unix_s", "unix_ms", or a strptime pattern
# timezone = "Europe/Berlin"   # for times written without a UTC offset (else such rows are bad)
settle_ms = 2000               # a file is read once unchanged this long (or renamed in whole)
poll_interval_ms = 1000
[[csv.signals]]
name = "batch_weight"
column = "weight_kg"
unit = "kg"
```

The exactly-once rule: a file is read in full, its good rows are emitted, and only when the
agent has *committed* them to the spool (signed and fsynced; ``Committed``) is the file
recorded in the ledger (``<folder>/.factoryops/ledger.sqlite``, keyed by the file's SHA-256)
and moved to ``done/``. A crash before the ledger write means the rows were not committed
(they come back with the file at restart, never twice) — or they were committed in the
last instant before the crash, the one case where a file is read twice; the ledger is
written in the same breath as the commit returns, so that window is a few milliseconds.
It is never silent: the ledger marks a file *pending* before its first row is emitted, and
a file found pending at its next read is logged as a replay and counted (``replays``), so
an auditor knows which file's readings may be in the spool twice (same values, same times).
Bad rows (wrong column count, unparsable time or number) go to
``quarantine/<file>.bad.csv`` with their line number and reason; the good rows of that file
are kept. A file already in the ledger (the same bytes dropped again) is moved to ``done/``
without reading.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import CONNECTOR_PARSERS, Where, _get, _int, _no_unknown
from agent.connectors.base import Committed, Emit, Sample
from agent.connectors.common import (
    SCALING_KEYS,
    MalformedPayload,
    Scaling,
    config_dir,
    parse_decimal,
    parse_list_section,
    parse_scaling,
    parse_signals,
    parse_time_format,
    parse_timestamp,
    parse_timezone,
)

__all__ = ["CsvConfig", "CsvDropConnector", "CsvSignal", "Ledger", "parse_rows"]

log = logging.getLogger(__name__)
BATCH = 500  # samples per emit
MAX_FILE_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class CsvSignal:
    name: str
    column: str
    scaling: Scaling


@dataclass(frozen=True, slots=True)
class CsvConfig:
    name: str
    folder: Path
    pattern: str
    timestamp_column: str
    timestamp_format: str
    timezone: dt.tzinfo | None
    settle_ms: int
    poll_interval_ms: int
    delimiter: str
    signals: tuple[CsvSignal, ...]


def _signal(t: dict[str, Any], w: Where) -> CsvSignal:
    _no_unknown(t, w, {"name", "column", *SCALING_KEYS})
    return CsvSignal(_get(t, w, "name", str), _get(t, w, "column", str), parse_scaling(t, w))


def _connector(t: dict[str, Any], w: Where) -> CsvConfig:
    delimiter = _get(t, w, "delimiter", str, ",")
    if len(delimiter) != 1:
        raise w.error("delimiter", f"{delimiter!r} must be one character")
    return CsvConfig(
        name=_get(t, w, "name", str),
        folder=config_dir(w) / _get(t, w, "folder", str),
        pattern=_get(t, w, "pattern", str, "*.csv"),
        timestamp_column=_get(t, w, "timestamp_column", str),
        timestamp_format=parse_time_format(t, w),
        timezone=parse_timezone(t, w),
        settle_ms=_int(t, w, "settle_ms", 0, 3_600_000, 2000),
        poll_interval_ms=_int(t, w, "poll_interval_ms", 10, 3_600_000, 1000),
        delimiter=delimiter,
        signals=parse_signals(t, w, _signal),
    )


_KNOWN = {
    "name", "folder", "pattern", "timestamp_column", "timestamp_format", "timezone", "settle_ms",
    "poll_interval_ms", "delimiter", "signals",
}  # fmt: skip


def parse_csv_section(raw: Any, w: Where) -> tuple[CsvConfig, ...]:
    return parse_list_section(raw, w, _connector, _KNOWN)


CONNECTOR_PARSERS["csv"] = parse_csv_section


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    reason: str
    raw: str


def parse_rows(cfg: CsvConfig, text: str) -> tuple[list[Sample], list[BadRow]]:
    """Good rows as samples (one per signal column), bad rows with their line and reason."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=cfg.delimiter, strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return [], [BadRow(1, "no header row", text[:200])]
    index = {name.strip(): i for i, name in enumerate(header)}
    missing = [
        c for c in (cfg.timestamp_column, *(s.column for s in cfg.signals)) if c not in index
    ]
    if missing:
        return [], [BadRow(1, f"header lacks column(s) {', '.join(missing)}", ",".join(header))]
    samples: list[Sample] = []
    bad: list[BadRow] = []
    lines = text.splitlines()
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            bad.append(BadRow(start, f"malformed CSV: {err}", _line(lines, start)))
            continue
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            reason = f"{len(row)} fields, the header has {len(header)}"
            bad.append(BadRow(start, reason, _line(lines, start)))
            continue
        try:
            ts = parse_timestamp(
                row[index[cfg.timestamp_column]],
                cfg.timestamp_format,
                cfg.timestamp_column,
                cfg.timezone,
            )
            values = [
                (s, s.scaling.apply(parse_decimal(row[index[s.column]], s.column), s.column))
                for s in cfg.signals
            ]
        except MalformedPayload as err:
            bad.append(BadRow(start, str(err), _line(lines, start)))
            continue
        samples += [Sample(s.name, v, s.scaling.unit, ts) for s, v in values]
    return samples, bad


def _line(lines: list[str], n: int) -> str:
    return lines[n - 1][:500] if 0 < n <= len(lines) else ""


class Ledger:
    """Which files (by SHA-256) were ingested; SQLite in the drop folder's .factoryops/."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL,"
            " good_rows INTEGER NOT NULL, bad_rows INTEGER NOT NULL, done_ns INTEGER NOT NULL)"
        )
        # files whose rows are being emitted: a row left here by a crash marks a replay
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL,"
            " started_ns INTEGER NOT NULL)"
        )

    def begin(self, sha: str, name: str) -> bool:
        """Mark ``sha`` pending; True when it already was (an ingest a crash interrupted)."""
        with self._db:
            was = self._db.execute("SELECT 1 FROM pending WHERE sha256 = ?", (sha,)).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO pending VALUES (?, ?, ?)", (sha, name, time.time_ns())
            )
        return was is not None

    def seen(self, sha: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM files WHERE sha256 = ?", (sha,)).fetchone() is not None
        )

    def record(self, sha: str, name: str, good: int, bad: int) -> None:
        with self._db:  # one transaction: done and no longer pending
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?)",
                (sha, name, good, bad, time.time_ns()),
            )
            self._db.execute("DELETE FROM pending WHERE sha256 = ?", (sha,))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def _read_capped(path: Path) -> bytes:
    """The file's bytes, or its first ``MAX_FILE_BYTES + 1`` (never a whole huge file in RAM)."""
    with path.open("rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def _move(src: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    dst = folder / src.name
    n = 1
    while dst.exists():
        dst = folder / f"{src.stem}.{n}{src.suffix}"
        n += 1
    os.replace(src, dst)
    return dst


def _write_quarantine(path: Path, bad: list[BadRow]) -> None:
    path.parent.mkdir(exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["line", "reason", "row"])
    w.writerows([b.line, b.reason, b.raw] for b in bad)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


@dataclass
class CsvDropConnector:
    config: CsvConfig
    errors: dict[str, int] = field(default_factory=dict)  # bad rows per file
    files_done: int = 0
    replays: int = 0  # files read again after a crash between commit and ledger (see above)
    _committed: Committed | None = None
    _sizes: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def bind_committed(self, committed: Committed) -> None:
        self._committed = committed

    async def run(self, emit: Emit) -> None:
        cfg = self.config
        cfg.folder.mkdir(parents=True, exist_ok=True)
        ledger = await asyncio.to_thread(Ledger, cfg.folder / ".factoryops" / "ledger.sqlite")
        try:
            while True:
                for path in await asyncio.to_thread(self._ready_files):
                    await self._ingest(path, ledger, emit)
                await asyncio.sleep(cfg.poll_interval_ms / 1000)
        finally:
            ledger.close()

    def _ready_files(self) -> list[Path]:
        """Files whose size and mtime have not changed for ``settle_ms`` (written in full)."""
        now, ready = time.monotonic(), []
        for path in sorted(self.config.folder.glob(self.config.pattern)):
            if not path.is_file() or path.name.startswith("."):
                continue
            st = path.stat()
            seen = self._sizes.get(path.name)
            if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
                self._sizes[path.name] = (st.st_size, st.st_mtime_ns, now)
                if self.config.settle_ms > 0:
                    continue
            elif now - seen[2] < self.config.settle_ms / 1000:
                continue
            ready.append(path)
        return ready

    async def _ingest(self, path: Path, ledger: Ledger, emit: Emit) -> None:
        cfg = self.config
        self._sizes.pop(path.name, None)
        data = await asyncio.to_thread(_read_capped, path)
        sha = hashlib.sha256(data).hexdigest()
        if await asyncio.to_thread(ledger.seen, sha):
            log.info(
                "csv %s: %s was ingested before (same bytes); moved to done/", self.name, path.name
            )
            await asyncio.to_thread(_move, path, cfg.folder / "done")
            return
        samples: list[Sample] = []
        if len(data) > MAX_FILE_BYTES:  # only its first MAX_FILE_BYTES + 1 bytes were read
            bad = [BadRow(0, f"file larger than {MAX_FILE_BYTES} bytes: not read", "")]
        else:
            try:
                samples, bad = parse_rows(cfg, data.decode("utf-8-sig"))
            except UnicodeDecodeError as err:
                bad = [BadRow(0, f"not UTF-8: {err}", "")]
        replay = False
        if samples:
            replay = await asyncio.to_thread(ledger.begin, sha, path.name)
        if replay:
            self.replays += 1
            log.warning(
                "csv %s: %s was being ingested when the agent stopped; reading it again: "
                "if its readings were committed just before the stop, they are in the spool "
                "twice (same values and times)", self.name, path.name,
            )  # fmt: skip
        for i in range(0, len(samples), BATCH):
            await emit(samples[i : i + BATCH])
        if samples and self._committed is not None:
            await self._committed()  # the readings are signed and on disk
        if bad:
            self.errors[path.name] = len(bad)
            target = cfg.folder / "quarantine" / f"{path.name}.bad.csv"
            await asyncio.to_thread(_write_quarantine, target, bad)
            log.warning(
                "csv %s: %s: %d bad row(s) quarantined in %s (first: line %d: %s)",
                self.name, path.name, len(bad), target, bad[0].line, bad[0].reason,
            )  # fmt: skip
        await asyncio.to_thread(ledger.record, sha, path.name, len(samples), len(bad))
        await asyncio.to_thread(_move, path, cfg.folder / "done")
        self.files_done += 1
