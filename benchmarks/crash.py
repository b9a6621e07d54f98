"""``factoryops bench crash``: kill -9 of the agent under load; lost, duplicated, admitted.

Shaped like the harness that measured the ThingsBoard IoT Gateway (issue 17): a Modbus TCP
server that numbers every read of every register (``hil_tests.numbered_modbus``: each sample
is unique and the server knows what it produced, and when), the agent (its own process,
``factoryops agent run``) polling 10 units x 20 registers at 10 Hz and uploading to a hub
(``factoryops hub serve``, its own process), ``--kills`` kill -9 of the agent at random moments
1-8 s after it reported ready (systemd's READY=1), a restart after each; then one clean stop,
the server stopped, and a last run that uploads the rest. Then: produced vs accepted at the
hub (stored leaves), duplicates, and stated loss (the signed gap records the restarts wrote,
payload key 15) vs true loss, kill by kill.

Baseline, same run (``--baseline``): the same schedule with ``[spool] journal_ms = 1000``,
one journal batch a second, about what sealing the window alone (1 s or 1,000 readings) kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from agent.spool import RESTART_REASON, Spool
from agent.uplink import register_device
from attestation import decode_leaf, parse_microproof
from attestation.leafbatch import split_leaves
from attestation.microproof import Gap
from attestation.signers.software import SoftwareSigner
from benchmarks.hub import HubProcess
from cloud_sync.storage import Store
from hil_tests.numbered_modbus import NumberedModbus, numbered_agent_sections, signal_name

__all__ = ["CrashFigures", "KillAccount", "LossBreakdown", "account", "breakdown", "command"]

_READY_TIMEOUT_S = 120.0
_SYNC_TIMEOUT_S = 300.0
_ATTRIBUTION_SLACK_S = 0.5  # a read answered just after the kill still belongs to it


@dataclass(frozen=True, slots=True)
class KillAccount:
    """One kill: when, the spool's journal end and seq mark just after it, and its loss."""

    at: float  # time.monotonic() of the kill
    journal_end: int  # first seq not journaled
    mark: int  # seqs below it may have been handed out
    true_lost: int = 0  # samples produced before the kill that never reached the hub
    stated: int = 0  # seqs the signed gap records state for it


@dataclass(frozen=True, slots=True)
class CrashFigures:
    produced: int
    accepted: int
    lost: int
    duplicated: int
    unexpected: int  # accepted values the server never produced
    stated: int
    other_gaps: int  # seqs in gap records for any other reason
    kills: tuple[KillAccount, ...]

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.produced if self.produced else 0.0

    @property
    def admitted_pct(self) -> float:
        """Of the true loss, the share a signed gap record owns up to, kill by kill."""
        lost = sum(k.true_lost for k in self.kills)
        admitted = sum(min(k.stated, k.true_lost) for k in self.kills)
        return 100.0 * admitted / lost if lost else 100.0

    @property
    def stated_over_true(self) -> float | None:
        lost = sum(k.true_lost for k in self.kills)
        return self.stated / lost if lost else None

    @property
    def max_excess(self) -> int:
        """The most a kill's stated loss exceeded its true loss (readings)."""
        return max((k.stated - k.true_lost for k in self.kills), default=0)


def account(
    produced: dict[tuple[int, int], list[float]],
    accepted: Counter[tuple[str, int]],
    gaps: list[Gap],
    kills: list[KillAccount],
) -> CrashFigures:
    """Attribute every lost sample to the first kill at or after its read, and every seq of a
    restart gap record to the first kill whose [journal end, mark) holds it."""
    lost_at: list[float] = []
    names: set[tuple[str, int]] = set()
    for (unit, reg), times in produced.items():
        name = signal_name(unit, reg)
        for k, t in enumerate(times, start=1):
            names.add((name, k))
            if (name, k) not in accepted:
                lost_at.append(t)
    true = [0] * len(kills)
    for t in lost_at:
        for i, kill in enumerate(kills):
            if t <= kill.at + _ATTRIBUTION_SLACK_S:
                true[i] += 1
                break
    stated = [0] * len(kills)
    restart = [g for g in gaps if g.reason == RESTART_REASON]
    for g in restart:
        for seq in range(g.first, g.last + 1):
            owner = next((i for i, k in enumerate(kills) if k.journal_end <= seq < k.mark), None)
            if owner is not None:
                stated[owner] += 1
    return CrashFigures(
        produced=sum(len(t) for t in produced.values()),
        accepted=len(accepted),
        lost=len(lost_at),
        duplicated=sum(n - 1 for n in accepted.values() if n > 1),
        unexpected=sum(1 for key in accepted if key not in names),
        stated=sum(g.last - g.first + 1 for g in restart),
        other_gaps=sum(g.last - g.first + 1 for g in gaps if g.reason != RESTART_REASON),
        kills=tuple(
            KillAccount(k.at, k.journal_end, k.mark, true[i], stated[i])
            for i, k in enumerate(kills)
        ),
    )


# how long before its kill a lost sample was read (ms): where in the agent it was lost
AGE_EDGES_MS = (5, 10, 20, 50, 100, 200, 500)


@dataclass(frozen=True, slots=True)
class LossBreakdown:
    """One kill, by value: samples the server produced since the last kill, those the agent
    had journaled when it died, those lost although journaled (a recovery bug if ever
    non-zero), and the lost ones by how long before the kill the server answered them."""

    produced: int
    journaled: int
    lost: int
    lost_journaled: int
    lost_by_age_ms: tuple[int, ...]  # counts per AGE_EDGES_MS bucket, the last one beyond


def breakdown(
    produced: dict[tuple[int, int], list[float]],
    accepted: Counter[tuple[str, int]],
    journaled: list[set[tuple[str, int]]],
    kills: list[KillAccount],
) -> list[LossBreakdown]:
    """Per kill: where the samples read before it went (see ``LossBreakdown``)."""
    n = len(kills)
    made, kept, lost, lost_kept = [0] * n, [0] * n, [0] * n, [0] * n
    ages = [[0] * (len(AGE_EDGES_MS) + 1) for _ in range(n)]
    for (unit, reg), times in produced.items():
        name = signal_name(unit, reg)
        for k, t in enumerate(times, start=1):
            i = next(
                (i for i, kill in enumerate(kills) if t <= kill.at + _ATTRIBUTION_SLACK_S), None
            )
            if i is None:
                continue
            made[i] += 1
            in_journal = (name, k) in journaled[i]
            kept[i] += in_journal
            if (name, k) in accepted:
                continue
            lost[i] += 1
            lost_kept[i] += in_journal
            age_ms = (kills[i].at - t) * 1000
            ages[i][sum(age_ms > edge for edge in AGE_EDGES_MS)] += 1
    return [
        LossBreakdown(made[i], kept[i], lost[i], lost_kept[i], tuple(ages[i])) for i in range(n)
    ]


class _Agent:
    """``factoryops agent run`` in a subprocess, with systemd's readiness protocol."""

    def __init__(self, config: Path, log: Path, nice: int = 0) -> None:
        self.notify = config.with_name(f"notify-{time.monotonic_ns()}.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.listener.bind(str(self.notify))
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "factoryops", "agent", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "NOTIFY_SOCKET": str(self.notify)},
            )
        if nice:  # before it starts its threads: they inherit it
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, nice)

    async def ready(self) -> None:
        self.listener.settimeout(_READY_TIMEOUT_S)
        message = await asyncio.to_thread(self.listener.recv, 256)
        if message != b"READY=1":
            raise click.ClickException(f"the agent said {message!r}, expected READY=1")

    async def end(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait)
        self.listener.close()
        self.notify.unlink(missing_ok=True)
        return code


def _spool_marks(spool: Path) -> tuple[int, int]:
    """(journal end, seq mark) the killed agent left, read-only."""
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        journal_end, mark = db.execute("SELECT journal_next, reserved_seq FROM state").fetchone()
    return int(journal_end), int(mark)


def _journaled(spool: Path, from_seq: int) -> set[tuple[str, int]]:
    """(signal, value) of every reading the spool holds from ``from_seq`` on, read-only."""
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT signal, value FROM readings WHERE seq >= ?", (from_seq,))
        return {(name, int(value)) for name, value in rows}


def _spool_windows(spool: Path) -> list[bytes]:
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        return [c for (c,) in db.execute("SELECT cose FROM windows ORDER BY window")]


def _hub_contents(hub_db: Path) -> tuple[list[bytes], Counter[tuple[str, int]]]:
    with sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True) as db:
        coses = [c for (c,) in db.execute("SELECT cose FROM windows ORDER BY window")]
    store = Store.read_only(hub_db)  # the hub's leaves wherever they are (ADR 0053)
    try:
        blobs = [leaves for _, _, leaves in store.all_leaves()]
    finally:
        store.close()
    accepted: Counter[tuple[str, int]] = Counter()
    for blob in blobs:
        for leaf in split_leaves(blob):
            r = decode_leaf(leaf)
            accepted[r.signal, int(r.value)] += 1
    return coses, accepted


def _config(
    workdir: Path, hub_url: str, port: int, journal_ms: int, units: int, registers: int
) -> Path:
    path = workdir / "agent.toml"
    path.write_text(
        "\n".join(
            [
                "[device]",
                'name = "crash-bench"',
                'key_file = "device.key"',
                "[hub]",
                f'url = "{hub_url}"',
                "timeout_s = 5.0",
                "[spool]",
                'path = "spool.db"',
                f"journal_ms = {journal_ms}",
                numbered_agent_sections("127.0.0.1", port, units, registers, 100),
            ]
        )
    )
    return path


async def _until_synced(spool: Path, hub_db: Path) -> None:
    deadline = time.monotonic() + _SYNC_TIMEOUT_S
    while _hub_contents(hub_db)[0] != _spool_windows(spool):
        if time.monotonic() > deadline:
            raise click.ClickException("the agent did not upload its outbox in time")
        await asyncio.sleep(0.5)


async def _run(
    workdir: Path,
    *,
    kills: int,
    journal_ms: int,
    seed: int,
    units: int,
    registers: int,
    span_s: tuple[float, float],
    nice: int,
    progress: Console,
) -> tuple[CrashFigures, list[LossBreakdown], list[Gap]]:
    rng = random.Random(seed)
    (workdir / "hub").mkdir(parents=True, exist_ok=True)
    hub = await asyncio.to_thread(HubProcess, workdir / "hub", None, {})
    log = workdir / "agent.stderr"
    try:
        async with NumberedModbus(units, registers) as server:
            config = _config(workdir, hub.url, server.port, journal_ms, units, registers)
            signer = SoftwareSigner.load_or_create(workdir / "device.key")
            await asyncio.to_thread(
                register_device, hub.url, hub.admin, signer, name="crash-bench", state_dir=workdir
            )
            accounts: list[KillAccount] = []
            journaled: list[set[tuple[str, int]]] = []
            for k in range(kills):
                agent = _Agent(config, log, nice)
                await agent.ready()
                await asyncio.sleep(rng.uniform(*span_s))
                await agent.end(signal.SIGKILL)
                at = time.monotonic()
                accounts.append(KillAccount(at, *_spool_marks(workdir / "spool.db")))
                since = accounts[-2].journal_end if k else 0
                journaled.append(_journaled(workdir / "spool.db", since))
                progress.log(f"kill {k + 1}/{kills}: {server.total:,} samples produced")
            agent = _Agent(config, log, nice)  # one clean stop: it seals everything it read
            await agent.ready()
            await asyncio.sleep(2.0)
            if await agent.end(signal.SIGTERM) != 0:
                raise click.ClickException(f"the agent's clean stop failed; see {log}")
            await server.stop()  # nothing more is produced
            produced = server.produced
        agent = _Agent(config, log)  # the server is gone: this run only uploads
        await agent.ready()
        await _until_synced(workdir / "spool.db", workdir / "hub" / "hub.db")
        await agent.end(signal.SIGTERM)
        coses, accepted = _hub_contents(workdir / "hub" / "hub.db")
    finally:
        await asyncio.to_thread(hub.stop)
    gaps = [g for c in coses for g in parse_microproof(c).proof.gaps]
    # gap records a restart stored that no window has signed yet (nothing new was read after
    # it): the next window the agent seals signs them (ADR 0017); counted, and said apart
    spool = Spool(workdir / "spool.db")
    owed = list(spool.recovered_gaps)
    spool.close()
    where = breakdown(produced, accepted, journaled, accounts)
    (workdir / "produced.json").write_text(  # for a closer look at a kept run
        json.dumps(
            {
                "produced": {signal_name(u, r): t for (u, r), t in produced.items()},
                "kills": [[k.at, k.journal_end, k.mark] for k in accounts],
            }
        )
    )
    return account(produced, accepted, gaps + owed, accounts), where, owed


def _row(table: Table, what: str, f: CrashFigures) -> None:
    ratio = f.stated_over_true
    table.add_row(
        what,
        f"{f.produced:,}",
        f"{f.lost:,} ({f.lost_pct:.3f} %)",
        f"{f.duplicated:,}",
        f"{f.admitted_pct:.1f} %",
        f"{f.stated:,}",
        "-" if ratio is None else f"{ratio:.2f}",
        f"{f.max_excess:,}",
    )


@click.command()
@click.option("--kills", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--journal-ms",
    type=int,
    default=10,
    show_default=True,
    help="The agent's [spool] journal_ms: at most one journal batch (fsync) per interval.",
)
@click.option("--units", type=int, default=10, show_default=True)
@click.option("--registers", type=int, default=20, show_default=True, help="Per unit.")
@click.option("--min-s", type=float, default=1.0, show_default=True, help="Earliest kill.")
@click.option("--max-s", type=float, default=8.0, show_default=True, help="Latest kill.")
@click.option(
    "--baseline/--no-baseline",
    default=False,
    show_default=True,
    help="Also run the same schedule with journal_ms = 1000 (one batch a second).",
)
@click.option(
    "--agent-nice",
    type=int,
    default=0,
    show_default=True,
    help="The agent's nice value (negative needs root): a gateway's agent does not share its"
    " CPU with a loaded build machine's other work.",
)
@click.option("--keep", type=click.Path(path_type=Path), default=None, help="Keep files here.")
def command(
    kills: int,
    seed: int,
    journal_ms: int,
    units: int,
    registers: int,
    min_s: float,
    max_s: float,
    baseline: bool,
    agent_nice: int,
    keep: Path | None,
) -> None:
    """Readings lost, duplicated and admitted when the agent is killed -9 under load.

    \b
    Examples:
      factoryops bench crash
      factoryops bench crash --kills 5 --journal-ms 25 --baseline
    """
    console = Console(stderr=True)
    runs = [("journal", journal_ms)] + ([("baseline", 1000)] if baseline else [])
    results: list[tuple[str, int, CrashFigures, list[LossBreakdown], list[Gap]]] = []
    for what, ms in runs:
        with tempfile.TemporaryDirectory() as d:
            workdir = keep / what if keep else Path(d)
            workdir.mkdir(parents=True, exist_ok=True)
            with console.status(f"{what}: journal_ms = {ms}, {kills} kills"):
                figures, where, owed = asyncio.run(
                    _run(
                        workdir,
                        kills=kills,
                        journal_ms=ms,
                        seed=seed,
                        units=units,
                        registers=registers,
                        span_s=(min_s, max_s),
                        nice=agent_nice,
                        progress=console,
                    )
                )
            results.append((what, ms, figures, where, owed))
    table = Table(title=f"kill -9 x {kills}, {units} units x {registers} registers at 10 Hz")
    for col in ("run", "produced", "lost", "dup", "admitted", "stated", "stated/true", "excess"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for what, ms, f, _, _ in results:
        _row(table, f"{what} (journal_ms {ms})", f)
    Console().print(table)
    _, ms, main, where, owed = results[0]
    out: dict[str, object] = {
        "lost_pct": round(main.lost_pct, 4),
        "duplicated": main.duplicated,
        "admitted_pct": round(main.admitted_pct, 2),
        "stated_over_true": None
        if main.stated_over_true is None
        else round(main.stated_over_true, 3),
        "produced": main.produced,
        "lost": main.lost,
        "stated": main.stated,
        "max_excess_readings": main.max_excess,
        "unexpected": main.unexpected,
        "other_gap_seqs": main.other_gaps,
        "kills": kills,
        "journal_ms": ms,
        "seed": seed,
        "agent_nice": agent_nice,
        "per_kill_true_stated": [[k.true_lost, k.stated] for k in main.kills],
        # per kill: produced, journaled, lost, lost although journaled, lost by age (ms
        # before the kill: <=5, <=10, <=20, <=50, <=100, <=200, <=500, more)
        "per_kill_produced_journaled_lost": [
            [b.produced, b.journaled, b.lost, b.lost_journaled] for b in where
        ],
        "lost_journaled": sum(b.lost_journaled for b in where),
        # stated by gap records the spool holds that no window has signed yet (counted in
        # admitted_pct and stated: the agent's next window signs them)
        "owed_gap_seqs": sum(g.last - g.first + 1 for g in owed),
        "lost_by_age_ms": [
            sum(col) for col in zip(*(b.lost_by_age_ms for b in where), strict=True)
        ],
    }
    if baseline:
        base = results[1][2]
        out["baseline_lost_pct"] = round(base.lost_pct, 4)
        out["baseline_stated_over_true"] = (
            None if base.stated_over_true is None else round(base.stated_over_true, 3)
        )
    click.echo(json.dumps(out))
