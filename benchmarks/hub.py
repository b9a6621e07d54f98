"""``factoryops bench hub``: micro-proofs/s the hub accepts (verified, logged, stored).

The hub runs as its own process (``factoryops hub serve``, one uvicorn worker), on SQLite and
on PostgreSQL. The load generator, in this process, pre-signs every proof before timing (1,000
readings each, one chain per device) and then uploads from one keep-alive HTTP/1.1 connection
per device over loopback; when the upload ends, every proof must be stored. Baselines,
measured in the same run: the same hub with its leaves checked by the pure-Python decoder
(``FACTORYOPS_PURE_PYTHON=1``, what it did before ADR 0007), and the same readings inserted
straight into SQLite one row a reading with ``executemany`` and no verification (the hub's
storage before ADR 0007).

Three rates: proofs per second of wall time (the hub and the load generator share this
machine's cores); proofs per CPU-second of the hub process, read from ``/proc`` around the
upload: what one core running the hub sustains; and, on SQLite, proofs per second of wall
time with every hub thread confined to one CPU and the load generator on another
(``sched_setaffinity``): one core, measured directly. The SQLite hub runs ``--repeat`` times
each way (a fresh hub and database each) and the medians are reported with every run
listed, because a shared VM's speed swings between runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2
import click
import httpx
from cryptography.hazmat.primitives import serialization
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

from agent.sealer import SealedWindow, seal
from agent.window import ClosedWindow
from attestation.localports import free_port
from attestation.microproof import GENESIS_PREV, chain_hash
from attestation.reading import Reading
from attestation.signers.software import SoftwareSigner
from benchmarks.leanhttp import LeanConnection

__all__ = ["HubProcess", "command", "process_cpu_seconds"]

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# seconds a hub process may take to answer /healthz: ~3 s on an idle VM, past 60 s on one
# shared by nine test runs (importing the app alone took 12 s of wall time there)
_START_S = 300


def _chains(
    devices: int, proofs: int, per_proof: int
) -> list[tuple[SoftwareSigner, list[SealedWindow]]]:
    out = []
    for d in range(devices):
        signer = SoftwareSigner.generate()
        prev, chain, seq = GENESIS_PREV, [], 0
        for w in range(proofs):
            rs = tuple(
                Reading(
                    seq + i,
                    1_700_000_000_000_000_000 + (seq + i) * 1_000_000,
                    f"s{i % 8}",
                    float(i),
                    "u",
                )
                for i in range(per_proof)
            )
            sealed = seal(
                ClosedWindow(rs), index=w, prev=prev, signer=signer, iat=1_700_000_000 + d
            )
            prev, seq = chain_hash(sealed.cose), seq + per_proof
            chain.append(sealed)
        out.append((signer, chain))
    return out


def process_cpu_seconds(pid: int) -> float | None:
    """CPU another process has used, every thread of it included, those that have ended too;
    None where it cannot be read (not Linux, or the process is gone).

    From the process's CPU-time clock, in nanoseconds: the clock id glibc's
    ``clock_getcpuclockid(pid)`` makes (Linux's ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``,
    a stable kernel ABI; Python has no call for it). ``/proc/<pid>/stat`` counts in clock ticks
    (10 ms): a run that costs a hub ~0.3 s of CPU read to ±3 % (2026-12-06: `growth_ratio`
    1.0 and 3,200.0 proofs a CPU-second, both 1,024 proofs / 0.32 s), so it is only the
    fallback."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
    except OSError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServedProcess:
    """An HTTP server in a subprocess on a free port of 127.0.0.1, started by ``argv`` (to
    which ``--port`` is added): ready once ``GET /healthz`` answers 200."""

    def __init__(self, argv: Sequence[str], log_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # stderr to a file, not a pipe: a pipe nobody reads until the end fills up (64 KiB)
        # and then stalls the server at its next log line, in the middle of a measurement
        self.stderr = log_dir / "server.stderr"
        with self.stderr.open("wb") as err_out:
            self.proc = subprocess.Popen(
                [*argv, "--port", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=err_out,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            )
        deadline = time.monotonic() + _START_S
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.proc.kill()  # a server still starting must not outlive the bench
                self.proc.wait()
                err = self.stderr.read_text(errors="replace").strip()
                why = (
                    f"exited with status {code}"
                    if code is not None
                    else f"did not answer {self.url}/healthz within {_START_S} s"
                )
                raise click.ClickException(
                    f"{_named(argv)} {why}; its stderr ends: {err[-500:] or '(empty)'}"
                )
            time.sleep(0.1)  # a server process starting: polled, nothing to wait on

    def cpu_seconds(self) -> float | None:
        """CPU the process has used (``process_cpu_seconds``)."""
        return process_cpu_seconds(self.proc.pid)

    def pin(self, cpu: int) -> None:
        """Confine every thread of the process to one CPU (threads it starts later inherit it)."""
        for thread in os.listdir(f"/proc/{self.proc.pid}/task"):
            os.sched_setaffinity(int(thread), {cpu})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _named(argv: Sequence[str]) -> str:
    """A server's command as a person would name it: the module after ``-m``, or the
    program, and its next two words (``factoryops hub serve``)."""
    words = list(argv[argv.index("-m") + 1 :] if "-m" in argv else [Path(argv[0]).name, *argv[1:]])
    return " ".join(words[:3])


class HubProcess(ServedProcess):
    """``factoryops hub serve`` in a subprocess."""

    def __init__(
        self,
        data_dir: Path,
        db_url: str | None,
        env: dict[str, str],
        args: Sequence[str] = (),
    ) -> None:
        argv = [sys.executable, "-m", "factoryops", "hub", "serve", "--data-dir", str(data_dir)]
        argv += ["--allow-software-keys", *(["--db", db_url] if db_url else []), *args]
        super().__init__(argv, data_dir, env)
        self.admin = (data_dir / "admin-token").read_text().strip()


def _register(hub: HubProcess, signer: SoftwareSigner, name: str) -> None:
    key = serialization.load_der_public_key(signer.public_key_der())
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    r = httpx.post(
        f"{hub.url}/v1/devices",
        json={"public_key_pem": pem.decode(), "key_kind": "software", "name": name},
        headers={"authorization": f"Bearer {hub.admin}"},
    )
    r.raise_for_status()


async def _post_all(port: int, posts: list[bytes]) -> None:
    """One device's uploads, one after the other on one keep-alive HTTP/1.1 connection."""
    conn = await LeanConnection.open(port)
    try:
        for body in posts:
            status, answer = await conn.post([body])
            if not status.startswith(b"HTTP/1.1 200"):
                raise click.ClickException(f"upload refused: {status!r} {answer!r}")
    finally:
        conn.close()


@dataclass(frozen=True)
class _Load:
    """What every run uploads: each device's key (registered first) and its POST bodies,
    encoded once before any timing."""

    signers: list[SoftwareSigner]
    bodies: list[list[bytes]]  # a device's POSTs, in chain order
    proofs: int

    @classmethod
    def of(cls, chains: list[tuple[SoftwareSigner, list[SealedWindow]]], batch: int) -> _Load:
        bodies = [
            [
                cbor2.dumps(
                    {
                        "proofs": [
                            {"cose": w.cose, "leaves": b"".join(w.leaves)}
                            for w in chain[i : i + batch]
                        ]
                    }
                )
                for i in range(0, len(chain), batch)
            ]
            for _, chain in chains
        ]
        return cls([s for s, _ in chains], bodies, sum(len(c) for _, c in chains))


async def _upload(port: int, load: _Load) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(_post_all(port, posts) for posts in load.bodies))
    return time.perf_counter() - started


def _cpus_for_pinning() -> tuple[int, int] | None:
    """(the hub's CPU, the load generator's): two CPUs this process may use, else None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[-1], cpus[0]) if len(cpus) >= 2 else None


def _measure(
    db_url: str | None,
    load: _Load,
    env: dict[str, str] | None = None,
    pin: tuple[int, int] | None = None,
) -> tuple[float, float | None]:
    """Seconds the upload took, and CPU seconds the hub process spent on it (one core's
    worth of work: the hub runs one event loop and one writer thread). With ``pin`` the hub's
    threads may run on one CPU only and the load generator on another: the wall rate is then
    what one core sustains. Every proof must be stored when the upload ends."""
    with tempfile.TemporaryDirectory() as d:
        hub = HubProcess(Path(d), db_url, env or {})
        mine = os.sched_getaffinity(0) if pin else None
        try:
            for i, signer in enumerate(load.signers):
                _register(hub, signer, f"bench-{i}")
            if pin:
                hub.pin(pin[0])
                os.sched_setaffinity(0, {pin[1]})
            cpu_before = hub.cpu_seconds()
            elapsed = asyncio.run(_upload(hub.port, load))
            cpu_after = hub.cpu_seconds()
            stored = httpx.get(f"{hub.url}/healthz").json()["windows"]
            if stored != load.proofs:  # every acknowledged proof
                raise click.ClickException(f"the hub stored {stored} of {load.proofs} proofs")
            if cpu_before is None or cpu_after is None:
                return elapsed, None
            return elapsed, cpu_after - cpu_before
        finally:
            if mine:
                os.sched_setaffinity(0, mine)
            hub.stop()


def _median_run(runs: list[tuple[float, float | None]]) -> tuple[float, float | None]:
    """The median elapsed time of the runs and, separately, their median hub CPU time."""
    cpus = [c for _, c in runs if c is not None]
    return statistics.median(t for t, _ in runs), statistics.median(cpus) if cpus else None


def _sqlite_baseline(chains: list[tuple[SoftwareSigner, list[SealedWindow]]]) -> float:
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(Path(d) / "raw.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE readings (utid TEXT, seq INTEGER, window INTEGER, ts_ns INTEGER,"
            " signal TEXT, value REAL, unit TEXT, quality INTEGER, PRIMARY KEY (utid, seq))"
        )
        started = time.perf_counter()
        for n, (_, chain) in enumerate(chains):
            for w in chain:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (str(n), r.seq, w.index, r.ts_ns, r.signal, r.value, r.unit, r.quality)
                        for r in w.window.readings
                    ],
                )
                db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
        return elapsed


def _pg_database(base_url: str) -> tuple[str, str] | None:
    """A fresh database of our own on the PostgreSQL server; None when it is not there."""
    name = f"fo_bench_{secrets.token_hex(4)}"
    try:
        admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as err:  # noqa: BLE001 - any failure means: skip PostgreSQL, say why
        click.echo(f"PostgreSQL not measured: {err}".splitlines()[0], err=True)
        return None
    return base_url.rsplit("/", 1)[0] + f"/{name}", name


def _drop_pg(base_url: str, name: str) -> None:
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@click.command()
@click.option(
    "--devices",
    default=16,
    show_default=True,
    help="Concurrent devices (one HTTP connection each): a hub serves a fleet, and uploads"
    " that arrive together share a commit.",
)
@click.option(
    "--proofs",
    default=64,
    show_default=True,
    help="Proofs per device (1,024 in all by default: /proc counts CPU in 10 ms ticks, so a"
    " run must last long enough for its CPU figure to be read within ~2 %).",
)
@click.option("--per-proof", default=1000, show_default=True, help="Readings per proof.")
@click.option("--batch", default=8, show_default=True, help="Proofs per POST.")
@click.option(
    "--pg", "pg_url", default=DEFAULT_PG, show_default=True, help="PostgreSQL server ('' to skip)."
)
@click.option(
    "--repeat",
    default=5,
    show_default=True,
    type=click.IntRange(1, 50),
    help="Runs of the SQLite hub (a fresh hub each), free and then confined to one core; the"
    " medians are reported, every run listed.",
)
def command(
    devices: int, proofs: int, per_proof: int, batch: int, pg_url: str, repeat: int
) -> None:
    """Micro-proofs/s accepted by a hub process on SQLite and on PostgreSQL.

    Two ways to read "on one core": proofs per CPU-second of the hub process (free to use
    both cores), and proofs per second of wall time with the hub's threads confined to one
    CPU and the load generator on another (Linux, two CPUs or more).

    \b
    Examples:
      factoryops bench hub
      factoryops bench hub --devices 4 --proofs 250 --pg ''   # fewer, busier devices
      factoryops bench hub --batch 1 --proofs 16               # one proof a request
    """
    console = Console()
    with console.status("signing proofs (before timing)"):
        chains = _chains(devices, proofs, per_proof)
        load = _Load.of(chains, batch)
    total = load.proofs
    runs = []
    for i in range(repeat):
        with console.status(f"SQLite hub, run {i + 1} of {repeat}"):
            runs.append(_measure(None, load))
    t_sqlite, cpu_sqlite = _median_run(runs)
    pinned = []
    if (cpus := _cpus_for_pinning()) is not None:
        for i in range(repeat):
            with console.status(f"SQLite hub confined to CPU {cpus[0]}, run {i + 1} of {repeat}"):
                pinned.append(_measure(None, load, pin=cpus)[0])
    else:
        click.echo("one-core runs skipped: they need Linux and two CPUs", err=True)
    t_one_core = statistics.median(pinned) if pinned else None
    with console.status("SQLite hub, leaves checked in pure Python (baseline)"):
        t_pure, _ = _measure(None, load, {"FACTORYOPS_PURE_PYTHON": "1"})
    t_raw = _sqlite_baseline(chains)
    t_pg = cpu_pg = None
    if pg_url and (made := _pg_database(pg_url)) is not None:
        try:
            with console.status("PostgreSQL hub"):
                t_pg, cpu_pg = _measure(made[0], load)
        finally:
            _drop_pg(pg_url, made[1])
    figures = {
        "sqlite_proofs_per_s": round(total / t_sqlite, 1),
        "sqlite_readings_per_s": round(total * per_proof / t_sqlite),
        # what one core sustains: proofs per CPU-second of the hub process
        "sqlite_proofs_per_hub_cpu_s": round(total / cpu_sqlite, 1) if cpu_sqlite else None,
        # wall time with the hub's threads confined to one CPU (the generator on another)
        "sqlite_one_core_proofs_per_s": round(total / t_one_core, 1) if t_one_core else None,
        "postgres_proofs_per_s": round(total / t_pg, 1) if t_pg else None,
        "postgres_readings_per_s": round(total * per_proof / t_pg) if t_pg else None,
        # the hub process only: PostgreSQL's own server processes are not counted
        "postgres_proofs_per_hub_cpu_s": round(total / cpu_pg, 1) if cpu_pg else None,
        "baseline_pure_python_sqlite_proofs_per_s": round(total / t_pure, 1),
        "ratio_native_vs_pure_python": round(t_pure / t_sqlite, 2),
        "baseline_raw_sqlite_proofs_per_s": round(total / t_raw, 1),
        "ratio_sqlite_hub_vs_raw_insert": round(t_raw / t_sqlite, 3),
        "proofs": total,
        "readings_per_proof": per_proof,
        "devices": devices,
        "batch": batch,
        # every SQLite run (proofs/s, proofs per hub CPU-second): this VM's speed swings
        "sqlite_runs": [[round(total / t, 1), round(total / c, 1) if c else None] for t, c in runs],
        "sqlite_one_core_runs": [round(total / t, 1) for t in pinned],
    }
    table = Table(
        title=f"Hub ingest: {total} x {per_proof} readings, {devices} clients, {batch} a POST,"
        f" SQLite median of {repeat}"
    )
    table.add_column("what")
    table.add_column("proofs/s", justify="right")
    table.add_column("readings/s", justify="right")
    table.add_row(
        "hub on SQLite",
        f"{figures['sqlite_proofs_per_s']:,}",
        f"{figures['sqlite_readings_per_s']:,}",
    )
    if cpu_sqlite:
        table.add_row(
            "hub on SQLite, per CPU-second of the hub process",
            f"{total / cpu_sqlite:,.1f}",
            f"{total * per_proof / cpu_sqlite:,.0f}",
        )
    if t_one_core:
        table.add_row(
            "hub on SQLite confined to one core (wall time)",
            f"{total / t_one_core:,.1f}",
            f"{total * per_proof / t_one_core:,.0f}",
        )
    if t_pg:
        table.add_row(
            "hub on PostgreSQL",
            f"{figures['postgres_proofs_per_s']:,}",
            f"{figures['postgres_readings_per_s']:,}",
        )
    for what, elapsed in (
        ("baseline: hub on SQLite, pure-Python leaf check", t_pure),
        ("baseline: raw SQLite executemany, one row a reading", t_raw),
    ):
        table.add_row(what, f"{total / elapsed:,.1f}", f"{total * per_proof / elapsed:,.0f}")
    console.print(table)
    click.echo(json.dumps(figures))
