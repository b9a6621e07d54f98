"""``factoryops bench spool``: what the spool thread pays per seal as window rows pile up.

After every seal the runtime reads the outbox counts (``Spool.counts``) and offers the spool
to shedding (``Spool.shed``). Both used to read every window row; window rows were never
deleted, so the cost grew with the gateway's age (ADR 0048). This seeds spools of growing
size and times, in the same run, the old full-scan queries (the baseline, kept here) and
the spool's own calls. The rows are written directly with SQL (a real spool's schema and
triggers, a 1 KB stand-in for each micro-proof, readings already shed): signing and
committing 10^5 windows one by one would take minutes and measure something else.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from agent.spool import Spool

__all__ = ["command"]

# what ``Spool.counts`` and ``Spool.shed`` ran before ADR 0048 (on every seal)
OLD_COUNTS = (
    "SELECT COUNT(*), COALESCE(SUM(outbox = 'pending'), 0),"
    " COALESCE(SUM(outbox = 'sent'), 0), COALESCE(SUM(outbox = 'acked'), 0),"
    " COALESCE(SUM(outbox = 'refused'), 0), COALESCE(SUM(count), 0),"
    " COALESCE(SUM(readings_shed), 0) FROM windows"
)
OLD_SHED_SCAN = (
    "SELECT window, count * 64 FROM windows WHERE outbox = 'acked' AND readings_shed = 0"
    " ORDER BY window"
)
PROOF_BYTES = 1024


def _seed(spool: Spool, rows: int) -> None:
    """``rows`` windows, all acknowledged but the last ten, readings shed (a synced gateway)."""
    db = spool._db  # seeding the real file under the spool's own triggers
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO windows VALUES (?, ?, ?, 50, ?, 0, ?, NULL, ?)",
        ((w, 50 * w, 50 * w + 49, bytes(PROOF_BYTES), *_state(w, rows)) for w in range(rows)),
    )
    db.execute("COMMIT")


def _state(window: int, rows: int) -> tuple[str, int]:
    return ("acked", 1) if window < rows - 10 else ("pending", 0)


def _figures(spool: Spool, seconds: float) -> dict[str, float]:
    db = spool._db  # the baseline runs on the same connection
    out = {
        "counts_full_scan_us": _per_call_us(lambda: db.execute(OLD_COUNTS).fetchone(), seconds),
        "counts_us": _per_call_us(spool.counts, seconds),
        "shed_scan_us": _per_call_us(lambda: db.execute(OLD_SHED_SCAN).fetchall(), seconds),
        "shed_under_cap_us": _per_call_us(lambda: spool.shed(1 << 50), seconds),
    }
    old = out["counts_full_scan_us"] + out["shed_scan_us"]
    out["old_over_new"] = old / (out["counts_us"] + out["shed_under_cap_us"])
    return out


def _per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    fn()  # warm the page cache
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        fn()
        n += 1
    return elapsed / n * 1e6


@click.command()
@click.option(
    "--rows",
    "sizes",
    type=int,
    multiple=True,
    default=(1_000, 100_000),
    show_default=True,
    help="Window rows in a spool (repeat for several spools).",
)
@click.option("--seconds", type=float, default=1.0, show_default=True, help="Time per figure.")
def command(sizes: tuple[int, ...], seconds: float) -> None:
    """Microseconds per ``counts()`` and per ``shed()`` under the cap, against the full scans
    they replaced, on spools of ``--rows`` window rows.

    \b
    Example:
      factoryops bench spool --rows 1000 --rows 100000
    """
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        for rows in sizes:
            spool = Spool(Path(d) / f"spool-{rows}.db")
            try:
                _seed(spool, rows)
                figures[str(rows)] = _figures(spool, seconds)
            finally:
                spool.close()
    table = Table(title="Spool calls after each seal (us per call, same run)")
    cols = ("window rows", "counts: full scan", "counts()", "shed: acked scan", "shed()", "old/new")
    for col in cols:
        table.add_column(col, justify="right")
    keys = ("counts_full_scan_us", "counts_us", "shed_scan_us", "shed_under_cap_us")
    for size, f in figures.items():
        table.add_row(
            f"{int(size):,}", *(f"{f[k]:,.1f}" for k in keys), f"{f['old_over_new']:,.0f}x"
        )
    Console().print(table)
    print(json.dumps({"rows": figures}))
