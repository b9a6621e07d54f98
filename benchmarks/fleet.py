"""``factoryops bench fleet``: the hub at fleet scale, measured from outside.

Every figure comes from real uploads over HTTP (loopback) to real hub processes
(``factoryops hub serve``, uvicorn) on SQLite or on PostgreSQL, never from calls in process:

1. ``sqlite_one_core_proofs_per_s``: ``bench hub``'s load (devices on keep-alive connections,
   8 proofs a POST) into a SQLite hub whose threads are confined to one CPU.
2. ``growth_ratio``: the same load, hub on one CPU, into a hub whose log already holds
   ``--big-log`` entries (10^6) over one holding ``--small-log`` (10^3), runs alternating;
   proofs per hub CPU-second (the wall rate is listed too). The logs are seeded through
   the storage layer (``benchmarks.fleetload.seed_log``), and the seeded tree is checked
   against the hub's own checkpoint before the load starts.
3. ``replicas_ratio``: the load split over two hub processes on one PostgreSQL database over
   the same load into one; afterwards the log is checked as one consistent tree (both
   hubs sign the same checkpoint, every index once, every entry the hash of its stored
   proof, a consistency proof from half-way verifies). ``replicas_ratio_ceiling`` is the
   ratio the machine itself allows once two hubs and the database fill its CPUs.
4. ``gateways_per_core``: simulated gateways, each uploading one window of 1,000 readings
   every ``--period`` seconds (one proof a POST), into a SQLite hub on one CPU; the
   largest fleet whose p99 upload latency (from the moment the upload was due) stays under
   ``--p99-limit`` with every upload accepted. Fleets grow by ``--step`` from ``--gateways``.
   Connections are kept alive (as the agent's uplink now does), a pool of them shared by
   the gateways as behind a reverse proxy; the baseline, in the same run at the first fleet
   size, opens a new connection for every upload (the agent before issue 16).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from sqlalchemy import Engine, create_engine, text

from attestation import merkle
from attestation.microproof import sign_microproof
from attestation.signednote import Checkpoint, NoteVerifier, open_note, parse_checkpoint
from attestation.signers.software import SoftwareSigner
from benchmarks.checkfloor import ChecksFloor, checks_floor
from benchmarks.cpuquota import CpuQuota, QuotaUnavailable
from benchmarks.fleetload import (
    SimDevice,
    WindowTemplate,
    seed_devices,
    seed_log,
    templates,
    upload_body,
)
from benchmarks.hub import (
    DEFAULT_PG,
    HubProcess,
    ServedProcess,
    _cpus_for_pinning,
    _drop_pg,
    _pg_database,
    _post_all,
    _register,
    process_cpu_seconds,
)
from benchmarks.leanhttp import LeanConnection
from cloud_sync.storage import Store

__all__ = ["command", "largest_holding"]

_KEEP_ALIVE = ["--keep-alive", "120"]  # longer than any pause of a pooled connection here


@dataclass(frozen=True)
class _Sizes:
    devices: int
    proofs: int
    per_proof: int
    batch: int
    repeat: int
    small_log: int
    big_log: int
    seed_devices: int
    gateways: int
    step: float
    max_gateways: int
    period: float
    rounds: int
    connections: int
    refine: int = 0  # midpoints tried between the last fleet that held and the first that did not
    gather_baseline: bool = True  # also run the first fleet size with the commit wait off


QUICK = _Sizes(
    devices=4,
    proofs=8,
    per_proof=1000,
    batch=4,
    repeat=1,
    small_log=1000,
    big_log=5000,
    seed_devices=100,
    gateways=20,
    step=2.0,
    max_gateways=20,
    period=1.0,
    rounds=2,
    connections=8,
    gather_baseline=False,
)


@dataclass(frozen=True)
class _FleetLoad:
    """``bench hub``'s load shape: each device's POST bodies (``batch`` proofs each, in
    chain order), the devices to register before uploading."""

    bodies: list[list[bytes]]
    proofs: int
    fleet: list[SimDevice]


def _load(sizes: _Sizes, windows: Sequence[WindowTemplate]) -> _FleetLoad:
    fleet = [SimDevice.make(windows[: sizes.proofs]) for _ in range(sizes.devices)]
    bodies = [
        [
            _body(d.coses[i : i + sizes.batch], windows[i : i + sizes.batch])
            for i in range(0, len(d.coses), sizes.batch)
        ]
        for d in fleet
    ]
    return _FleetLoad(bodies, sizes.devices * sizes.proofs, fleet)


def _body(coses: Sequence[bytes], windows: Sequence[WindowTemplate]) -> bytes:
    import cbor2  # noqa: PLC0415 - only bodies of several proofs are built with it

    return cbor2.dumps(
        {"proofs": [{"cose": c, "leaves": w.leaves} for c, w in zip(coses, windows, strict=True)]}
    )


# --- hub processes ------------------------------------------------------------------------


@contextlib.contextmanager
def _hub(
    data_dir: Path,
    db_url: str | None,
    warm: WindowTemplate,
    *,
    cpu: int | None = None,
    args: Sequence[str] = (),
) -> Iterator[HubProcess]:
    """A hub process, its threads on ``cpu``, that has already accepted one upload (a
    device registered over HTTP, one proof): its first request's one-off work (imports,
    caches, the writer thread) is not what a measurement times."""
    hub = HubProcess(data_dir, db_url, {}, [*_KEEP_ALIVE, *args])
    try:
        if cpu is not None:
            hub.pin(cpu)
        signer = SoftwareSigner.generate()
        _register(hub, signer, f"warm-{secrets.token_hex(4)}")
        cose = sign_microproof(warm.proof, signer, iat=1_700_000_000)
        r = httpx.post(
            f"{hub.url}/v1/proofs",
            content=b"".join(upload_body(cose, warm.leaves)),
            headers={"content-type": "application/cbor"},
            timeout=60,
        )
        if r.status_code != 200:
            raise click.ClickException(f"warm-up upload refused: {r.status_code} {r.text}")
        yield hub
    finally:
        hub.stop()


@contextlib.contextmanager
def _pinned_here(cpu: int | None) -> Iterator[None]:
    mine = os.sched_getaffinity(0) if cpu is not None else None
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        if mine:
            os.sched_setaffinity(0, mine)


def _sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'hub.db'}"


def _prepared(url: str, fleet: Sequence[SimDevice]) -> None:
    """Create the hub's schema at ``url`` and register ``fleet`` through the storage layer."""
    store = Store.open(url)
    try:
        seed_devices(store.engine, fleet)
    finally:
        store.close()


def _upload_all(hubs: Sequence[HubProcess], load: _FleetLoad) -> float:
    """Upload every device's bodies (device i to hub i % len(hubs)); wall seconds."""
    started = time.perf_counter()

    async def run() -> None:
        await asyncio.gather(
            *(_post_all(hubs[i % len(hubs)].port, bodies) for i, bodies in enumerate(load.bodies))
        )

    asyncio.run(run())
    return time.perf_counter() - started


def _stored(hub: HubProcess) -> int:
    return int(httpx.get(f"{hub.url}/healthz", timeout=30).json()["windows"])


def _commits(hub: HubProcess) -> tuple[float, float]:
    """(group commits, upload requests they stored) so far, from the hub's /metrics."""
    text_ = httpx.get(f"{hub.url}/metrics", timeout=30).text
    got = {}
    for line in text_.splitlines():
        name, _, value = line.partition(" ")
        if name in (_GROUPS + "_count", _GROUPS + "_sum"):
            got[name] = float(value)
    return got.get(_GROUPS + "_count", 0.0), got.get(_GROUPS + "_sum", 0.0)


_GROUPS = "factoryops_hub_commit_group_requests"


# --- 2. growth ----------------------------------------------------------------------------


@dataclass
class _Run:
    proofs: int
    wall_s: float
    cpu_s: float | None

    @property
    def per_cpu_s(self) -> float | None:
        return self.proofs / self.cpu_s if self.cpu_s else None


def _run_on(
    data_dir: Path,
    load: _FleetLoad,
    pin: tuple[int, int] | None,
    windows: Sequence[WindowTemplate],
    check: Callable[[HubProcess], None] | None = None,
) -> _Run:
    """Upload ``load`` into a hub on ``data_dir``'s SQLite database, the hub on one CPU and
    this process on the other; every proof must be stored when the upload ends."""
    with _hub(data_dir, _sqlite_url(data_dir), windows[0], cpu=pin[0] if pin else None) as hub:
        expected = _stored(hub) + load.proofs
        with _pinned_here(pin[1] if pin else None):
            before = hub.cpu_seconds()
            wall = _upload_all([hub], load)
            after = hub.cpu_seconds()
        if (got := _stored(hub)) != expected:
            raise click.ClickException(f"the hub stored {got} windows, expected {expected}")
        if check is not None:
            check(hub)
    cpu = after - before if after is not None and before is not None else None
    return _Run(load.proofs, wall, cpu)


def _seeded(data_dir: Path, entries: int, sizes: _Sizes, cose_size: int) -> bytes:
    store = Store.open(_sqlite_url(data_dir))
    try:
        return seed_log(
            store.engine,
            entries,
            devices_n=min(sizes.seed_devices, entries),
            cose_size=cose_size,
        )
    finally:
        store.close()


def _signed_checkpoint(hub: HubProcess) -> Checkpoint:
    verifier = NoteVerifier.from_vkey(httpx.get(f"{hub.url}/v1/log/key").json()["vkey"])
    return parse_checkpoint(open_note(httpx.get(f"{hub.url}/v1/log/checkpoint").text, [verifier]))


def _consistent(hub: HubProcess, size: int, root: bytes, cp: Checkpoint) -> None:
    """The hub's consistency proof from (size, root) to its signed checkpoint verifies."""
    proof = httpx.get(
        f"{hub.url}/v1/log/proof/consistency", params={"from": size, "to": cp.size}
    ).json()["proof"]
    merkle.verify_consistency(size, cp.size, root, cp.root, [base64.b64decode(p) for p in proof])


def _seed_check(entries: int, root: bytes) -> Callable[[HubProcess], None]:
    """After uploads onto a seeded log: the seeded tree (its root computed while seeding) is
    a prefix of the hub's signed tree, by the hub's own consistency proof."""

    def check(hub: HubProcess) -> None:
        _consistent(hub, entries, root, _signed_checkpoint(hub))

    return check


def _growth(
    sizes: _Sizes, windows: Sequence[WindowTemplate], pin: tuple[int, int] | None, say: Say
) -> dict[str, Any]:
    cose_size = len(SimDevice.make(windows[:1]).coses[0])
    runs: dict[int, list[_Run]] = {sizes.small_log: [], sizes.big_log: []}
    with tempfile.TemporaryDirectory() as big_dir:
        big = Path(big_dir)
        say(f"seeding a log of {sizes.big_log:,} entries")
        started = time.perf_counter()
        big_root = _seeded(big, sizes.big_log, sizes, cose_size)
        seed_s = time.perf_counter() - started
        for r in range(sizes.repeat):
            load = _load(sizes, windows)  # fresh devices: the big log is reused
            say(f"run {r + 1} of {sizes.repeat}: hub on one core, log of {sizes.small_log:,}")
            with tempfile.TemporaryDirectory() as d:
                _seeded(Path(d), sizes.small_log, sizes, cose_size)
                _prepared(_sqlite_url(Path(d)), load.fleet)
                runs[sizes.small_log].append(_run_on(Path(d), load, pin, windows))
            say(f"run {r + 1} of {sizes.repeat}: hub on one core, log of {sizes.big_log:,}")
            _prepared(_sqlite_url(big), load.fleet)
            check = _seed_check(sizes.big_log, big_root) if r == 0 else None
            runs[sizes.big_log].append(_run_on(big, load, pin, windows, check))
    small = _median_rates(runs[sizes.small_log])
    large = _median_rates(runs[sizes.big_log])
    return {
        # the hub on one core (pinned), log of --small-log entries: bench hub's load shape
        "sqlite_one_core_proofs_per_s": small["per_s"],
        "sqlite_proofs_per_hub_cpu_s": small["per_cpu_s"],
        "readings_per_proof": sizes.per_proof,
        "bulk_load": {"devices": sizes.devices, "proofs": sizes.proofs, "batch": sizes.batch},
        "growth_ratio": _ratio(large["per_cpu_s"], small["per_cpu_s"]),
        "growth_ratio_wall": _ratio(large["per_s"], small["per_s"]),
        "growth_small_log": sizes.small_log,
        "growth_big_log": sizes.big_log,
        "growth_small_proofs_per_hub_cpu_s": small["per_cpu_s"],
        "growth_big_proofs_per_hub_cpu_s": large["per_cpu_s"],
        "growth_small_proofs_per_s": small["per_s"],
        "growth_big_proofs_per_s": large["per_s"],
        "growth_seed_s": round(seed_s, 1),
        "growth_seed_checked": True,  # _seed_check raised otherwise
        "growth_runs": {
            str(k): [[round(x.proofs / x.wall_s, 1), _round(x.per_cpu_s)] for x in v]
            for k, v in runs.items()
        },
    }


def _median_rates(runs: Sequence[_Run]) -> dict[str, float | None]:
    cpus = [r.per_cpu_s for r in runs if r.per_cpu_s]
    return {
        "per_s": round(statistics.median(r.proofs / r.wall_s for r in runs), 1),
        "per_cpu_s": round(statistics.median(cpus), 1) if cpus else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# --- 3. replicas --------------------------------------------------------------------------


def _backend_cpu(engine: Engine, database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL server process serving ``database`` (Linux)."""
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
            {"d": database},
        ).scalars()
        out = {}
        for pid in pids:
            if (cpu := process_cpu_seconds(int(pid))) is not None:
                out[int(pid)] = cpu
    return out


_HALF = 0.5  # the CPU share each hub gets in the confined rounds


def _replicas(
    sizes: _Sizes, windows: Sequence[WindowTemplate], pg_url: str, say: Say
) -> dict[str, Any]:
    """Two hub processes on one fresh database; each round uploads a fresh load to one of
    them, then another fresh load split over both (device i to hub i % 2). Then the same
    rounds with each hub held to half a CPU (``CpuQuota``), as replicas on machines of
    their own: two hubs and the database then fit this machine's CPUs."""
    made = _pg_database(pg_url)
    if made is None:
        raise click.ClickException("PostgreSQL is not reachable: pass --pg '' to skip replicas")
    url, name = made
    watcher = create_engine(pg_url)
    runs: dict[tuple[int, bool], list[tuple[_Run, float]]] = {}
    no_quota: str | None = None  # why the rounds at half a CPU did not run
    try:
        made_loads = [_load(sizes, windows) for _ in range(4 * sizes.repeat)]
        _prepared(url, [d for load in made_loads for d in load.fleet])
        loads = iter(made_loads)  # a fresh one each run
        with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
            hubs = [stack.enter_context(_hub(Path(d), url, windows[0])) for _ in range(2)]

            def rounds(confined: bool) -> None:
                how = f", each held to {_HALF:g} CPU" if confined else ""
                for r in range(sizes.repeat):
                    for n in (1, 2):
                        say(f"replicas, round {r + 1} of {sizes.repeat}: {n} hub(s){how}")
                        run = _replica_run(hubs[:n], next(loads), watcher, name)
                        runs.setdefault((n, confined), []).append(run)

            rounds(confined=False)
            try:
                quotas = [stack.enter_context(_held(h, i)) for i, h in enumerate(hubs)]
            except QuotaUnavailable as why:
                no_quota = str(why)
                say(f"replicas at half a CPU each: not measured ({why})")
            else:
                rounds(confined=True)
                for q in quotas:
                    q.release()
            checked = _one_tree(hubs, url, _stored(hubs[0]))
    finally:
        watcher.dispose()
        _drop_pg(pg_url, name)
    return {
        **_replica_figures(runs, confined=False),
        **_replica_figures(runs, confined=True),
        **({"replicas_half_cpu_not_measured": no_quota} if no_quota else {}),
        "replicas_consistency": checked,
    }


@contextlib.contextmanager
def _held(hub: HubProcess, i: int) -> Iterator[CpuQuota]:
    quota = CpuQuota.make(f"factoryops-bench-hub{i}-{os.getpid()}", _HALF)
    try:
        quota.add(hub.proc.pid)
        yield quota
    finally:
        quota.remove()


def _replica_figures(
    runs: dict[tuple[int, bool], list[tuple[_Run, float]]], *, confined: bool
) -> dict[str, Any]:
    """The ratio and its parts for the unconfined rounds (``replicas_*``) or the rounds at
    half a CPU a hub (``replicas_half_cpu_*``)."""
    one_runs, two_runs = runs.get((1, confined)), runs.get((2, confined))
    key = "replicas_half_cpu" if confined else "replicas"
    if not one_runs or not two_runs:
        return {f"{key}_ratio": None}
    one = statistics.median(x.proofs / x.wall_s for x, _ in one_runs)
    two = statistics.median(x.proofs / x.wall_s for x, _ in two_runs)

    def us(
        of: list[tuple[_Run, float]], pick: Callable[[_Run, float], float | None]
    ) -> float | None:
        got = [v for run, pg in of if (v := pick(run, pg))]
        return round(statistics.median(got) / of[0][0].proofs * 1e6, 1) if got else None

    hubs2, pg2 = us(two_runs, lambda run, _: run.cpu_s), us(two_runs, lambda _, pg: pg)
    figures = {
        f"{key}_ratio": round(two / one, 3),
        f"{key}_one_hub_proofs_per_s": round(one, 1),
        f"{key}_two_hubs_proofs_per_s": round(two, 1),
        # CPU a proof: the hub processes, and PostgreSQL's backends serving this database
        f"{key}_hub_cpu_us_per_proof": us(one_runs, lambda run, _: run.cpu_s),
        f"{key}_pg_cpu_us_per_proof": us(one_runs, lambda _, pg: pg),
        f"{key}_two_hubs_cpu_us_per_proof": hubs2,
        f"{key}_two_pg_cpu_us_per_proof": pg2,
    }
    if not confined:
        figures["replicas_ratio_ceiling"] = _ratio_ceiling(one, hubs2, pg2)
    return figures


def _ratio_ceiling(one: float, hubs_us: float | None, pg_us: float | None) -> float | None:
    """The ratio this machine allows (ADR 0054): two hubs and PostgreSQL filling every CPU
    the bench may use, at the two-hub runs' CPU a proof, over the one-hub rate. On a
    machine with fewer CPUs than two hubs and the database need, it is below 2."""
    if not (hubs_us and pg_us and hasattr(os, "sched_getaffinity")):
        return None
    return round(len(os.sched_getaffinity(0)) / ((hubs_us + pg_us) * 1e-6) / one, 3)


def _replica_run(
    hubs: Sequence[HubProcess], load: _FleetLoad, watcher: Engine, database: str
) -> tuple[_Run, float]:
    """One load over ``hubs``: the run (their CPU summed) and the backends' CPU seconds."""
    expected = _stored(hubs[0]) + load.proofs
    cpu0 = [h.cpu_seconds() for h in hubs]
    pg0 = _backend_cpu(watcher, database)
    wall = _upload_all(hubs, load)
    pg1 = _backend_cpu(watcher, database)
    cpu1 = [h.cpu_seconds() for h in hubs]
    if (got := _stored(hubs[-1])) != expected:
        raise click.ClickException(f"the hubs stored {got} windows, expected {expected}")
    cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True) if a is not None and b is not None)
    return _Run(load.proofs, wall, cpu or None), sum(v - pg0.get(p, 0.0) for p, v in pg1.items())


def _one_tree(hubs: Sequence[HubProcess], url: str, size: int) -> dict[str, Any]:
    """After a run with several hubs: one consistent log, checked from outside. Both sign
    the same checkpoint of ``size`` entries; the log's indexes are 0..size-1 once each;
    each entry is the RFC 9162 leaf hash of the proof stored for it; the checkpoint's root
    is the root of those entries; a consistency proof from half-way verifies."""
    cps = [_signed_checkpoint(h) for h in hubs]
    if any(cp != cps[0] for cp in cps) or cps[0].size != size:
        raise click.ClickException(f"the hubs sign different checkpoints: {cps}")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT e.idx, e.entry_hash, w.cose FROM log_entries e JOIN windows w"
                    ' ON w.utid = e.utid AND w."window" = e."window" ORDER BY e.idx'
                )
            ).all()
    finally:
        engine.dispose()
    if [r[0] for r in rows] != list(range(size)):
        raise click.ClickException("the log's indexes are not 0..n-1 once each")
    hashes = [bytes(r[1]) for r in rows]
    if any(bytes(r[1]) != hashlib.sha256(b"\x00" + bytes(r[2])).digest() for r in rows):
        raise click.ClickException("a log entry is not the hash of its stored proof")
    if merkle.root(hashes) != cps[0].root:
        raise click.ClickException("the signed checkpoint is not the root of the stored entries")
    half = max(1, size // 2)
    _consistent(hubs[-1], half, merkle.root(hashes[:half]), cps[0])
    return {"checked": True, "entries": size, "hubs": len(hubs), "consistency_from": half}


# --- 4. gateways --------------------------------------------------------------------------


@dataclass
class _Level:
    gateways: int
    reuse: bool
    uploads: int = 0
    refused: int = 0  # answered other than 200, or reset (below)
    reset: int = 0  # connections the hub reset before it answered
    latencies: list[float] = field(default_factory=list)
    cpu_s: float | None = None
    commits: float = 0.0

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0

    def passed(self, limit: float) -> bool:
        return self.refused == 0 and self.uploads > 0 and self.p(0.99) < limit

    def summary(self) -> dict[str, Any]:
        return {
            "gateways": self.gateways,
            "connections": "kept" if self.reuse else "new each upload",
            "uploads": self.uploads,
            "refused": self.refused,
            "reset": self.reset,
            "p50_s": round(self.p(0.5), 4),
            "p99_s": round(self.p(0.99), 4),
            "hub_cpu_us_per_proof": round(self.cpu_s / self.uploads * 1e6, 1)
            if self.cpu_s and self.uploads
            else None,
            "requests_per_commit": round(self.uploads / self.commits, 2) if self.commits else None,
        }


async def _gateways_run(
    port: int,
    fleet: Sequence[SimDevice],
    windows: Sequence[WindowTemplate],
    sizes: _Sizes,
    level: _Level,
    first: int,
) -> None:
    """Every gateway uploads its windows ``first``, ``first + 1``, ... one a period, at its
    own phase; a latency runs from the moment the upload was due (a late client counts
    against the hub, never hides it)."""
    rng = random.Random(level.gateways)
    phases = [rng.random() * sizes.period for _ in fleet]
    due = sorted(
        (phase + k * sizes.period, g, first + k)
        for g, phase in enumerate(phases)
        for k in range(sizes.rounds)
    )
    pool: asyncio.Queue[LeanConnection] = asyncio.Queue()
    if level.reuse:
        for _ in range(min(sizes.connections, len(fleet))):
            pool.put_nowait(await LeanConnection.open(port))
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5

    async def one(at: float, g: int, k: int) -> None:
        conn = await pool.get() if level.reuse else None
        try:
            conn = conn or await LeanConnection.open(port)
            body = upload_body(fleet[g].coses[k], windows[k].leaves)
            status, _ = await conn.post(body, close=not level.reuse)
        except (ConnectionError, asyncio.IncompleteReadError):
            # an overloaded hub has reset kept connections (seen from ~14,500 gateways a
            # core, nothing in its log): the upload failed, and the level with it
            level.reset += 1
            status = b""
            if conn is not None:
                conn.close()
                conn = None  # a pooled one is replaced below: the pool keeps its size
        finally:
            if level.reuse:
                pool.put_nowait(conn or await LeanConnection.open(port))
            elif conn is not None:
                conn.close()
        level.latencies.append(loop.time() - (start + at))
        level.uploads += 1
        level.refused += not status.startswith(b"HTTP/1.1 200")

    async with asyncio.TaskGroup() as tasks:
        for at, g, k in due:
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.create_task(one(at, g, k))
    while not pool.empty():
        pool.get_nowait().close()


def _gateway_hub(
    levels: Sequence[_Level],
    fleet: Sequence[SimDevice],
    windows: Sequence[WindowTemplate],
    sizes: _Sizes,
    pin: tuple[int, int] | None,
    args: Sequence[str] = (),
) -> None:
    """Run ``levels`` one after the other on one fresh hub on one CPU (the second continues
    the first's chains: its gateways upload their next windows); ``args`` go to the hub."""
    n = max(level.gateways for level in levels)
    with tempfile.TemporaryDirectory() as d:
        _prepared(_sqlite_url(Path(d)), fleet[:n])
        cpu = pin[0] if pin else None
        with _hub(Path(d), _sqlite_url(Path(d)), windows[0], cpu=cpu, args=args) as hub:
            base = _stored(hub)
            for i, level in enumerate(levels):
                commits = _commits(hub)[0]
                _drive(hub, level, fleet, windows, sizes, pin, first=i * sizes.rounds)
                level.commits = _commits(hub)[0] - commits
            acknowledged = base + sum(level.uploads - level.refused for level in levels)
            if (got := _stored(hub)) != acknowledged:
                raise click.ClickException(f"hub stored {got} of {acknowledged} acknowledged")


def _http_floor(
    level: _Level,
    fleet: Sequence[SimDevice],
    windows: Sequence[WindowTemplate],
    sizes: _Sizes,
    pin: tuple[int, int] | None,
) -> None:
    """``level``'s uploads, at its rate, to the HTTP floor (``benchmarks/httpfloor.py``: the
    hub's web server answering without parsing, checking or storing) on the hub's CPU."""
    with tempfile.TemporaryDirectory() as d:
        floor = ServedProcess([sys.executable, "-m", "benchmarks.httpfloor"], Path(d), {})
        try:
            if pin is not None:
                floor.pin(pin[0])
            _drive(floor, level, fleet, windows, sizes, pin, first=0)
        finally:
            floor.stop()


def _drive(
    server: ServedProcess,
    level: _Level,
    fleet: Sequence[SimDevice],
    windows: Sequence[WindowTemplate],
    sizes: _Sizes,
    pin: tuple[int, int] | None,
    *,
    first: int,
) -> None:
    """``level``'s gateways upload windows ``first``... to ``server`` from the load
    generator's CPU; the server's CPU over the run goes into ``level.cpu_s``."""
    with _pinned_here(pin[1] if pin else None):
        before = server.cpu_seconds()
        asyncio.run(
            _gateways_run(server.port, fleet[: level.gateways], windows, sizes, level, first)
        )
        after = server.cpu_seconds()
    if before is not None and after is not None:
        level.cpu_s = after - before


def _checks_on(cpu: int | None, device: SimDevice, window: WindowTemplate) -> ChecksFloor:
    """The checks' floor (``benchmarks/checkfloor.py``) of ``device``'s ``window``, timed
    with this process on ``cpu`` (the hub's)."""
    with _pinned_here(cpu):
        return checks_floor(device, window)


def largest_holding(
    holds: Callable[[int], bool], first: int, step: float, most: int, refine: int
) -> int:
    """The largest fleet ``holds`` accepts (0: not even ``first``): sizes grow by ``step``
    up to ``most`` until one fails, then ``refine`` geometric midpoints between the last that
    held and the first that did not. Each size is tried once, in that order."""
    best, over = 0, 0
    n = first
    while n <= most:
        if not holds(n):
            over = n
            break
        best = n
        n = max(n + 1, round(n * step))
    for _ in range(refine if best and over else 0):
        mid = round(math.sqrt(best * over))
        if mid in (best, over):
            break
        best, over = (mid, over) if holds(mid) else (best, mid)
    return best


def _gateways(
    sizes: _Sizes,
    windows: Sequence[WindowTemplate],
    pin: tuple[int, int] | None,
    p99_limit: float,
    say: Say,
) -> dict[str, Any]:
    """Grow the fleet by ``step`` until p99 passes the limit, then halve the gap between the
    last size that held and the first that did not ``refine`` times (geometric midpoints);
    at the first size, connections kept and then (the baseline, same hub) a new connection
    each upload."""
    fleet: list[SimDevice] = []
    levels: list[_Level] = []
    baseline = _Level(sizes.gateways, reuse=False)
    cpu = pin[0] if pin else None
    probe = SimDevice.make(windows[:1])  # its first window times the checks; it uploads nothing
    say("the fixed checks of a proof on the hub's CPU, before the fleets (the machine's pace)")
    checks_before = _checks_on(cpu, probe, windows[0])

    def holds(n: int) -> bool:
        if len(fleet) < n:
            say(f"signing the windows of {n - len(fleet):,} more gateways")
            fleet.extend(SimDevice.make(windows[: 2 * sizes.rounds]) for _ in range(n - len(fleet)))
        say(f"{n:,} gateways, a window every {sizes.period:g} s each, connections kept")
        level = _Level(n, reuse=True)
        levels.append(level)
        _gateway_hub(
            [level, baseline] if n == sizes.gateways else [level], fleet, windows, sizes, pin
        )
        return level.passed(p99_limit)

    best = largest_holding(holds, sizes.gateways, sizes.step, sizes.max_gateways, sizes.refine)
    kept = levels[0].summary()["hub_cpu_us_per_proof"]
    new = baseline.summary()["hub_cpu_us_per_proof"]
    alone = _Level(sizes.gateways, reuse=True)  # the same fleet, each upload committed alone
    if sizes.gather_baseline:
        say(f"baseline: {sizes.gateways:,} gateways, the hub's commit wait off")
        _gateway_hub([alone], fleet, windows, sizes, pin, ["--commit-gather-ms", "0"])
    held = next((level for level in levels if level.gateways == best), None)
    floor: dict[str, Any] | None = None  # no fleet held: nothing to set the floor beside
    if held is not None:
        say(f"baseline: {best:,} gateways to the HTTP floor (the hub's server, no hub)")
        at_floor = _Level(best, reuse=True)
        _http_floor(at_floor, fleet, windows, sizes, pin)
        floor = at_floor.summary()
    floor_us = floor["hub_cpu_us_per_proof"] if floor else None
    say("baseline: the fixed checks of a proof (parse, signature, leaves) on the hub's CPU")
    checks = _checks_on(cpu, probe, windows[0])
    drift = _ratio(checks.total_us, checks_before.total_us)
    if drift is not None and abs(drift - 1) > 0.1:
        say(
            f"the checks' floor moved {checks_before.total_us:.1f} -> {checks.total_us:.1f} µs"
            " during the run: this machine's pace moved, and the fleet figure is one reading"
        )
    floor_all = floor_us + checks.total_us if floor_us else None  # HTTP and the checks
    return {
        "gateways_per_core": best,
        # the server alone a request, same uploads, same rate, same CPU (benchmarks/httpfloor)
        "http_floor": floor,
        "http_floor_us_per_request": floor_us,
        # what every proof costs before the hub's own code (benchmarks/checkfloor), and the
        # fleet one core could serve doing only that and the HTTP floor: no storage, no
        # headroom, 100 % busy
        "checks_floor_us_per_proof": checks.as_json(),
        # the same timed before the fleets, and after over before: 1.0 on a machine whose
        # pace held through the run (a VM's can move by a third within the hour)
        "checks_floor_before_us_per_proof": checks_before.as_json(),
        "machine_drift": drift,
        "floor_us_per_proof": _round(floor_all),
        "gateways_ceiling_at_floor": round(sizes.period * 1e6 / floor_all) if floor_all else None,
        # the hub's CPU a proof at the largest fleet it held over that floor
        "hub_cpu_over_http_floor": _ratio(held.summary()["hub_cpu_us_per_proof"], floor_us)
        if held is not None
        else None,
        "gateways_p99_limit_s": p99_limit,
        "gateways_period_s": sizes.period,
        "gateways_levels": [level.summary() for level in levels],
        "gateways_new_connection_baseline": baseline.summary(),
        # hub CPU a proof, a new connection each upload over connections kept (same fleet)
        "connection_reuse_cpu_ratio": _ratio(new, kept),
        "gateways_no_commit_wait_baseline": alone.summary() if sizes.gather_baseline else None,
        # hub CPU a proof with the idle writer's 2 ms wait off over on (same fleet size)
        "commit_wait_cpu_ratio": _ratio(alone.summary()["hub_cpu_us_per_proof"], kept)
        if sizes.gather_baseline
        else None,
    }


# --- the command --------------------------------------------------------------------------

Say = Callable[[str], None]


@click.command()
@click.option(
    "--quick", is_flag=True, help="Toy sizes (for tests: five hub starts): the figures mean little."
)
@click.option("--devices", default=16, show_default=True, help="Devices of the bulk load.")
@click.option("--proofs", default=64, show_default=True, help="Proofs per device (bulk load).")
@click.option("--batch", default=8, show_default=True, help="Proofs per POST (bulk load).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--small-log", default=1_000, show_default=True, help="Entries: growth baseline.")
@click.option("--big-log", default=1_000_000, show_default=True, help="Entries: growth.")
@click.option(
    "--gateways",
    default=2_000,
    show_default=True,
    help="First fleet size tried (start lower on a loaded machine: 300 here at load 12-21).",
)
@click.option("--step", default=1.5, show_default=True, help="Each next fleet is this x bigger.")
@click.option("--max-gateways", default=40_000, show_default=True)
@click.option(
    "--refine",
    default=2,
    show_default=True,
    help="Then this many midpoints between the last fleet that held and the first that did not.",
)
@click.option(
    "--period", default=10.0, show_default=True, help="Seconds between a gateway's windows."
)
@click.option("--rounds", default=3, show_default=True, help="Windows each gateway uploads.")
@click.option(
    "--connections",
    default=256,
    show_default=True,
    help="Kept-alive connections the gateways share (a reverse proxy's upstream pool).",
)
@click.option("--p99-limit", default=1.0, show_default=True, help="Seconds, p99 upload latency.")
@click.option(
    "--pg",
    "pg_url",
    default=DEFAULT_PG,
    show_default=True,
    help="PostgreSQL server ('' skips replicas).",
)
@click.option(
    "--only",
    type=click.Choice(["growth", "replicas", "gateways"]),
    multiple=True,
    help="Measure only these (repeatable; growth also gives the one-core figure). Default: all.",
)
def command(quick: bool, pg_url: str, p99_limit: float, only: tuple[str, ...], **kw: Any) -> None:
    """The hub at fleet scale: one core on SQLite, a log of 10^6 entries, two replicas on
    PostgreSQL, and simulated gateways uploading every 10 s, all over HTTP to real hub
    processes. Prints each figure, then one JSON line.

    \b
    Examples:
      factoryops bench fleet --repeat 2              # everything (24 min on a loaded 2-core VM)
      factoryops bench fleet --quick                 # toy sizes, five hub starts (tests run this)
      factoryops bench fleet --only growth --big-log 100000
      factoryops bench fleet --only gateways --gateways 5000 --step 1.25
      factoryops bench fleet --pg postgresql+psycopg://postgres@db/postgres --only replicas
    """
    sizes = QUICK if quick else _Sizes(per_proof=1000, seed_devices=1000, **kw)
    console = Console()
    parts = set(only) or {"growth", "replicas", "gateways"}

    def say(what: str) -> None:
        console.log(what)

    pin = _cpus_for_pinning()
    if pin is None:
        say("no CPU pinning: it needs Linux and two CPUs; figures are for the whole machine")
    count = max(sizes.proofs, 2 * sizes.rounds)
    say(f"sealing {count} window templates of {sizes.per_proof} readings")
    windows = templates(count, sizes.per_proof)
    figures: dict[str, Any] = {"quick": quick, "pinned_cpus": list(pin) if pin else None}
    if "growth" in parts:
        figures |= _growth(sizes, windows, pin, say)
    if "replicas" in parts and pg_url:
        figures |= _replicas(sizes, windows, pg_url, say)
    if "gateways" in parts:
        figures |= _gateways(sizes, windows, pin, p99_limit, say)
    for key, value in figures.items():
        if not isinstance(value, (dict, list)):
            console.print(f"{key}: {value}")
    click.echo(json.dumps(figures))
