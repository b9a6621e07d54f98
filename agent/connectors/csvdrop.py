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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.connectors.base import Committed, Emit, Sample
from agent.connectors.common import (
    SCALING,
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
from agent.tomlcheck import TableKeys, Where
from agent.tomlcheck import choice as _choice
from agent.tomlcheck import get as _get
from agent.tomlcheck import get_int as _int

__all__ = ["TABLES", "CsvConfig", "CsvDropConnector", "CsvSignal", "Ledger", "parse_rows"]

log = logging.getLogger(__name__)
BATCH = 500  # samples per emit
LEDGER = Path(".factoryops") / "ledger.sqlite"
LATE_WATCH_S = 300.0  # how long a file in done/ is watched for a writer that was not done
MAX_WATCHED = 1024  # files watched at once (the most recent)
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
    decimal: str = "."  # "," for the decimal comma of many European exports


# The keys of a [[csv]] table are the fields of these dataclasses (code review D16).
TABLES: Mapping[str, TableKeys] = {
    "csv[]": TableKeys(CsvConfig),
    "csv[].signals[]": TableKeys(CsvSignal, inline={"scaling": SCALING}),
}


def _signal(t: dict[str, Any], w: Where) -> CsvSignal:
    TABLES["csv[].signals[]"].check(t, w)
    return CsvSignal(_get(t, w, "name", str), _get(t, w, "column", str), parse_scaling(t, w))


def _connector(t: dict[str, Any], w: Where) -> CsvConfig:
    delimiter = _get(t, w, "delimiter", str, ",")
    if len(delimiter) != 1:
        raise w.error("delimiter", f"{delimiter!r} must be one character")
    decimal = _choice(t, w, "decimal", (".", ","), ".")
    if decimal == delimiter:
        raise w.error("decimal", f'{decimal!r} is the delimiter too: set delimiter = ";"')
    folder = config_dir(w) / _get(t, w, "folder", str)
    if not folder.is_dir():  # never created: a mistyped folder would be watched for nothing
        raise w.error("folder", f"{folder}: no such folder (create it, or fix the path)")
    return CsvConfig(
        name=_get(t, w, "name", str),
        folder=folder,
        pattern=_get(t, w, "pattern", str, "*.csv"),
        timestamp_column=_get(t, w, "timestamp_column", str),
        timestamp_format=parse_time_format(t, w),
        timezone=parse_timezone(t, w),
        settle_ms=_int(t, w, "settle_ms", 0, 3_600_000, 2000),
        poll_interval_ms=_int(t, w, "poll_interval_ms", 10, 3_600_000, 1000),
        delimiter=delimiter,
        signals=parse_signals(t, w, _signal),
        decimal=decimal,
    )


def parse_csv_section(raw: Any, w: Where) -> tuple[CsvConfig, ...]:
    return parse_list_section(raw, w, _connector, TABLES["csv[]"])


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    reason: str
    raw: str


class _Lines:
    """The file's lines for ``csv.reader``, from a position the parser can move back to."""

    def __init__(self, lines: list[str], pos: int) -> None:
        self.lines, self.pos = lines, pos

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def parse_rows(cfg: CsvConfig, text: str) -> tuple[list[Sample], list[BadRow]]:
    """Good rows as samples (one per signal column), bad rows with their line and reason.

    Row by row: a row that cannot be read is quarantined alone and reading goes on at the
    next line. A quoted field may span lines, but a stray quote must not take the rows after
    it along: a record over several lines that is not a good row is quarantined as its
    first line only, and the lines after it are read again as rows of their own. An empty
    file and a header-only file give nothing, alike.
    """
    lines = text.splitlines(keepends=True)
    if not any(line.strip() for line in lines):
        return [], []
    try:
        header = next(csv.reader([lines[0]], delimiter=cfg.delimiter, strict=True))
    except csv.Error as err:
        return [], [BadRow(1, f"header: malformed CSV: {err}", lines[0][:500])]
    index = {name.strip(): i for i, name in enumerate(header)}
    missing = [
        c for c in (cfg.timestamp_column, *(s.column for s in cfg.signals)) if c not in index
    ]
    if missing:
        return [], [BadRow(1, f"header lacks column(s) {', '.join(missing)}", ",".join(header))]
    samples: list[Sample] = []
    bad: list[BadRow] = []
    src = _Lines(lines, 1)
    reader = csv.reader(src, delimiter=cfg.delimiter, strict=True)
    while src.pos < len(lines):
        start = src.pos
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            row, reason = [], f"malformed CSV: {err}"
        else:
            reason = ""
        if not reason and not any(cell.strip() for cell in row):
            continue  # blank line
        got, reason = _row(cfg, header, index, row) if not reason else ([], reason)
        if reason and src.pos - start > 1:
            reason = f"unbalanced quote (its field ran over {src.pos - start} lines): {reason}"
        if reason:
            bad.append(BadRow(start + 1, reason, lines[start].rstrip("\r\n")[:500]))
            src.pos = start + 1  # the lines after a bad row are rows of their own
            reader = csv.reader(src, delimiter=cfg.delimiter, strict=True)
            continue
        samples += got
    return samples, bad


def _row(
    cfg: CsvConfig, header: list[str], index: dict[str, int], row: list[str]
) -> tuple[list[Sample], str]:
    """One record's samples, or the reason it is a bad row."""
    if len(row) != len(header):
        return [], f"{len(row)} fields, the header has {len(header)}"
    try:
        ts = parse_timestamp(
            row[index[cfg.timestamp_column]],
            cfg.timestamp_format,
            cfg.timestamp_column,
            cfg.timezone,
        )
        values = [
            (s, s.scaling.apply(_number(cfg, row[index[s.column]], s.column), s.column))
            for s in cfg.signals
        ]
    except MalformedPayload as err:
        return [], str(err)
    return [Sample(s.name, v, s.scaling.unit, ts) for s, v in values], ""


def _number(cfg: CsvConfig, cell: str, column: str) -> float:
    if cfg.decimal == ",":
        if "." in cell:  # a thousands point (1.234,5) is not guessed at
            raise MalformedPayload(column, f"not a decimal-comma number: {cell[:64]}")
        cell = cell.replace(",", ".")
    return parse_decimal(cell, column)


class Ledger:
    """Which files (by SHA-256) were ingested; SQLite in the drop folder's .factoryops/."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(exist_ok=True)  # never the drop folder itself (see check-config)
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
    # bad rows ("<row>") and files not read at all ("<file>"): fixed labels, so the metric
    # has two series per connector however many files pass through
    errors: dict[str, int] = field(default_factory=dict)
    files_done: int = 0
    empty_files: int = 0  # empty or header-only: no rows, moved to done/ with a warning
    replays: int = 0  # files read again after a crash between commit and ledger (see above)
    _committed: Committed | None = None
    _sizes: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    # files moved to done/: (bytes read, watch until) to notice a writer that was not done
    _taken: dict[Path, tuple[int, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def bind_committed(self, committed: Committed) -> None:
        self._committed = committed

    async def run(self, emit: Emit) -> None:
        cfg = self.config
        ledger: Ledger | None = None
        missing_logged = False
        try:
            while True:
                if not cfg.folder.is_dir():  # unmounted or removed since check-config
                    if not missing_logged:
                        log.error(
                            "csv %s: folder %s is gone; not created, waiting for it",
                            self.name, cfg.folder,
                        )  # fmt: skip
                    missing_logged = True
                elif ledger is None:
                    ledger = await asyncio.to_thread(Ledger, cfg.folder / LEDGER)
                    log.info(
                        "csv %s: watching %s for %s (settle %d ms, every %d ms)",
                        self.name, cfg.folder, cfg.pattern, cfg.settle_ms, cfg.poll_interval_ms,
                    )  # fmt: skip
                if ledger is not None and cfg.folder.is_dir():
                    missing_logged = False
                    for path in await asyncio.to_thread(self._ready_files):
                        await self._ingest(path, ledger, emit)
                    await asyncio.to_thread(self._late_writes)
                await asyncio.sleep(cfg.poll_interval_ms / 1000)
        finally:
            if ledger is not None:
                ledger.close()

    def _ready_files(self) -> list[Path]:
        """Files written in full: renamed into place (a rename sets the ctime past the last
        write's mtime), or with size and mtime unchanged for ``settle_ms``."""
        now, ready = time.monotonic(), []
        for path in sorted(self.config.folder.glob(self.config.pattern)):
            if not path.is_file() or path.name.startswith("."):
                continue
            st = path.stat()
            if st.st_ctime_ns > st.st_mtime_ns:
                ready.append(path)  # renamed (or linked) in after its last write
                continue
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
        if not samples and not bad:
            self.empty_files += 1
            log.warning("csv %s: %s has no data rows (empty or header only)", self.name, path.name)
        if bad:
            for b in bad:
                label = "<file>" if b.line == 0 else "<row>"
                self.errors[label] = self.errors.get(label, 0) + 1
            target = cfg.folder / "quarantine" / f"{path.name}.bad.csv"
            await asyncio.to_thread(_write_quarantine, target, bad)
            log.warning(
                "csv %s: %s: %d bad row(s) quarantined in %s (first: line %d: %s)",
                self.name, path.name, len(bad), target, bad[0].line, bad[0].reason,
            )  # fmt: skip
        await asyncio.to_thread(ledger.record, sha, path.name, len(samples), len(bad))
        done = await asyncio.to_thread(_move, path, cfg.folder / "done")
        self.files_done += 1
        self._taken[done] = (len(data), time.monotonic() + LATE_WATCH_S)
        while len(self._taken) > MAX_WATCHED:
            del self._taken[next(iter(self._taken))]

    def _late_writes(self) -> None:
        """A file that grows in done/ after it was taken had a writer that paused longer than
        ``settle_ms``: what it added is not read. Said at ERROR and counted, never silent."""
        now = time.monotonic()
        for done, (size, until) in list(self._taken.items()):
            try:
                grown = done.stat().st_size - size
            except OSError:  # moved away by an operator: nothing to watch
                del self._taken[done]
                continue
            if grown > 0:
                self.errors["<late write>"] = self.errors.get("<late write>", 0) + 1
                log.error(
                    "csv %s: %s grew by %d bytes after it was read (its writer paused longer "
                    "than settle_ms = %d): those bytes are not read; raise settle_ms or have "
                    "the writer rename the file in when complete",
                    self.name, done, grown, self.config.settle_ms,
                )  # fmt: skip
                self._taken[done] = (size + grown, until)
            if now >= until:
                del self._taken[done]
