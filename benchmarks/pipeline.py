"""``factoryops bench pipeline``: readings/s through the real sealing and spool path.

Pipeline: readings journaled in batches (agent.spool.journal, ADR 0017) -> leaf encode ->
RFC 9162 root -> micro-proof (stats, ES256 signature) -> SQLite commit via agent.spool. The
same run also times the path before the journal (readings written at the window's commit).
Baseline, same run and rows: SHA-256 of the same leaves plus a plain sqlite3 executemany of
the same rows, committed per window with the same pragmas.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from agent.sealer import seal
from agent.spool import Spool
from agent.window import ClosedWindow
from attestation.microproof import GENESIS_PREV
from attestation.reading import Reading, encode_leaf
from attestation.signers.software import SoftwareSigner

__all__ = ["command"]

_SIGNALS = (
    "Pressure",
    "Current",
    "Voltage",
    "Volume Flow RateRMS",
    "Temperature",
    "Thermocouple",
    "Accelerometer1RMS",
    "Accelerometer2RMS",
)


def _windows(n: int, size: int) -> list[ClosedWindow]:
    t0 = 1_760_000_000_000_000_000
    rs = [
        Reading(i, t0 + i * 12_500_000, _SIGNALS[i % 8], 20.0 + (i % 977) * 0.013, "u")
        for i in range(n)
    ]
    return [ClosedWindow(tuple(rs[i : i + size])) for i in range(0, n, size)]


def _pipeline(windows: list[ClosedWindow], workdir: Path, journal_batch: int = 0) -> float:
    """Seconds to seal and commit ``windows``; with ``journal_batch`` each window's readings
    are also journaled in batches of that many (one transaction each, fsynced beside it on
    a third thread) on a thread of their own, as the agent does (ADR 0017, 0032): the
    journal runs beside sealing, and a commit writes whatever the journal has not taken."""
    signer = SoftwareSigner.generate()
    spool = Spool(workdir / "spool.db")
    journal = ThreadPoolExecutor(1, thread_name_prefix="journal")
    syncs = ThreadPoolExecutor(1, thread_name_prefix="journal-sync")
    written: list[Future[None]] = []
    prev, started = GENESIS_PREV, time.perf_counter()
    for index, w in enumerate(windows):
        rs = w.readings
        for i in range(0, len(rs) if journal_batch else 0, journal_batch or 1):
            batch = rs[i : i + journal_batch]
            written.append(journal.submit(spool.journal, batch, batch[-1].seq + 1 + journal_batch))
            # the agent fsyncs the journal's writes once per journal_ms beside them (ADR 0032)
            written.append(syncs.submit(spool.sync_journal))
        sealed = seal(w, index=index, prev=prev, signer=signer, iat=1_760_000_000)
        spool.commit(sealed, now_ns=0)
        prev = sealed.chain_hash
    for f in written:
        f.result()
    elapsed = time.perf_counter() - started
    journal.shutdown()
    syncs.shutdown()
    spool.close()
    return elapsed


def _baseline(windows: list[ClosedWindow], workdir: Path) -> float:
    leaves = [[encode_leaf(r) for r in w.readings] for w in windows]  # not timed
    db = sqlite3.connect(workdir / "baseline.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE readings (seq INTEGER PRIMARY KEY, window INTEGER, ts_ns INTEGER,"
        " signal TEXT, value REAL, unit TEXT, quality INTEGER, score REAL)"
    )
    started = time.perf_counter()
    for index, (w, ls) in enumerate(zip(windows, leaves, strict=True)):
        for leaf in ls:
            hashlib.sha256(b"\x00" + leaf).digest()
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r.seq, index, r.ts_ns, r.signal, r.value, r.unit, r.quality, None)
                for r in w.readings
            ],
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


@click.command()
@click.option("--readings", type=int, default=200_000, show_default=True)
@click.option(
    "--window",
    "window_size",
    type=int,
    default=1000,
    show_default=True,
    help="Readings per signed window.",
)
@click.option(
    "--journal-batch",
    type=int,
    default=2500,
    show_default=True,
    help="Readings per journal batch: the agent journals every 10 ms, so at 250,000"
    " readings/s a batch holds ~2,500.",
)
@click.option(
    "--rounds",
    type=int,
    default=5,
    show_default=True,
    help="Best of N rounds (pipeline and baseline alternate, so noise hits both).",
)
def command(readings: int, window_size: int, journal_batch: int, rounds: int) -> None:
    """Readings/s through encode -> Merkle -> sign -> SQLite commit, vs a bare baseline.

    \b
    Example:
      factoryops bench pipeline --readings 200000 --window 1000
    """
    windows = _windows(readings, window_size)
    best_p = best_u = best_b = float("inf")
    with Console().status("measuring") as status:
        for r in range(rounds):
            status.update(f"round {r + 1}/{rounds}")
            with tempfile.TemporaryDirectory() as d:
                best_p = min(best_p, _pipeline(windows, Path(d), journal_batch))
            with tempfile.TemporaryDirectory() as d:
                best_u = min(best_u, _pipeline(windows, Path(d)))
            with tempfile.TemporaryDirectory() as d:
                best_b = min(best_b, _baseline(windows, Path(d)))
    pipeline_rate, baseline_rate = readings / best_p, readings / best_b
    unjournaled_rate = readings / best_u
    table = Table(
        title=f"pipeline: {readings:,} readings, windows of {window_size}, best of {rounds}"
    )
    for col in ("path", "seconds", "readings/s"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row(
        f"journal ({journal_batch} a batch)+encode+Merkle+sign+commit",
        f"{best_p:.3f}",
        f"{pipeline_rate:,.0f}",
    )
    table.add_row(
        "before the journal: encode+Merkle+sign+commit",
        f"{best_u:.3f}",
        f"{unjournaled_rate:,.0f}",
    )
    table.add_row("baseline: SHA-256 + executemany", f"{best_b:.3f}", f"{baseline_rate:,.0f}")
    Console().print(table)
    click.echo(
        json.dumps(
            {
                "readings_per_s": round(pipeline_rate),
                "baseline_per_s": round(baseline_rate),
                "ratio": round(pipeline_rate / baseline_rate, 3),
                "unjournaled_per_s": round(unjournaled_rate),
                "journal_ratio": round(pipeline_rate / unjournaled_rate, 3),
                "journal_batch": journal_batch,
                "readings": readings,
                "window": window_size,
                "windows_signed_per_s": round(len(windows) / best_p, 1),
            }
        )
    )
