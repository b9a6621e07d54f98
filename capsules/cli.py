"""``factoryops capsule``: list, show, validate and apply the capsules of the catalogue."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from capsules.catalogue import apply as apply_capsule
from capsules.catalogue import catalogue, find, load
from capsules.errors import CapsuleError
from capsules.render import Endpoints, job_policy

__all__ = ["capsule"]


_KEY = click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The hub's Ed25519 log key (HUB_DATA/hub-log.key).",
)


@click.group()
def capsule() -> None:
    """Capsules: one deployable product per factory or supply-chain area (docs/capsules.md).

    \b
    Examples:
      factoryops capsule list
      factoryops capsule show permanent-magnets
      factoryops capsule validate ./my-capsule/
      factoryops capsule apply quality-ndt --out /etc/factoryops --hub https://hub.example
    """


@capsule.command("list")
def list_() -> None:
    """Every capsule of the catalogue, by area (each one is validated as it is listed).

    \b
    Example:
      factoryops capsule list
    """
    t = Table(title="FactoryOps capsules")
    for col in ("area", "name", "version", "phase", "signals", "model", "simulator"):
        t.add_column(col)
    caps = catalogue()
    for c in caps:
        star = " *" if c.priority else ""
        t.add_row(
            f"{c.area}{star}",
            c.name,
            c.version,
            c.phase,
            str(len(c.signals)),
            c.model.family,
            c.simulator.kind,
        )
    Console().print(t)
    click.echo(f"{len(caps)} capsules, all valid (* = priority capsule with a pilot simulator)")


@capsule.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The hub job policy as JSON instead.")
def show(name: str, as_json: bool) -> None:
    """One capsule: area, phase, signals with units and ranges, model, jobs and faults.

    \b
    Example:
      factoryops capsule show permanent-magnets
    """
    c = find(name)
    if as_json:
        click.echo(json.dumps(job_policy(c), indent=2))
        return
    console = Console()
    console.print(f"[bold]{c.name}[/bold] {c.version}  area {c.area}: {c.area_name}")
    console.print(f"{c.title}\n{c.summary}\nphase: {c.phase}   sha256: {c.digest}")
    t = Table(title="signals")
    for col in ("connector", "signal", "quantity", "unit", "range", "normal", "Hz"):
        t.add_column(col)
    for conn in c.connectors:
        for s in conn.signals:
            t.add_row(
                f"{conn.name} ({conn.protocol})",
                s.name,
                s.quantity,
                s.unit,
                f"{s.range[0]:g} .. {s.range[1]:g}",
                f"{s.normal[0]:g} .. {s.normal[1]:g}",
                f"{s.sample_hz:g}",
            )
    console.print(t)
    m = c.model
    console.print(f"model: {m.family} over {len(m.signals)} signals (lags {m.lags})")
    console.print(
        f"proof: windows of {c.proof.window_readings} readings / {c.proof.window_ms} ms, "
        f"drift test {c.proof.drift_test}, report {c.proof.report_cadence}"
    )
    console.print(
        f"edge: disk cap {c.edge.disk_cap_mib} MiB, shedding {c.edge.shedding}, "
        f"channel {c.edge.update_channel}"
    )
    for j in c.jobs:
        console.print(f"job: {j.kind} {j.cadence} — {j.objective}")
    for f in c.simulator.faults:
        console.print(
            f"simulated fault: {f.kind} {f.signal} at {f.start_s:g} s for {f.duration_s:g} s"
        )


@capsule.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Check a capsule folder or capsule.toml; exit 1 naming the key and line of the problem.

    \b
    Example:
      factoryops capsule validate capsules/catalogue/quality-ndt
    """
    c = load(path)
    click.echo(
        f"{path}: OK  {c.name} {c.version} area {c.area} signals={len(c.signals)} "
        f"model={c.model.family} jobs={len(c.jobs)} sha256={c.digest[:16]}"
    )


@capsule.command()
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--hub", "hub_url", default=None, help="The hub URL the agent syncs to.")
@click.option("--device", default=None, help="The gateway's name (default NAME-gateway).")
@click.option("--signer", type=click.Choice(["tpm", "software"]), default="tpm", show_default=True)
@click.option("--model", "model_manifest", default=None, help="The model's .manifest.json.")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    metavar="CONNECTOR=ADDRESS",
    help="host:port (Modbus) or URL (OPC UA, MQTT) of a connector; repeatable.",
)
def apply(
    name: str,
    out: Path,
    hub_url: str | None,
    device: str | None,
    signer: str,
    model_manifest: str | None,
    endpoints: tuple[str, ...],
) -> None:
    """Write agent.toml, hub-jobs.json and report-template.json for a site (nothing if refused).

    NAME is a capsule of the catalogue or the path of a capsule folder.

    \b
    Example:
      factoryops capsule apply permanent-magnets --out site/ --hub https://hub.example \\
          --endpoint magnet-line-plc=10.0.0.7:502
    """
    conns: dict[str, str] = {}
    for item in endpoints:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise click.BadParameter(f"{item!r} is not CONNECTOR=ADDRESS", param_hint="--endpoint")
        conns[key] = value
    c = load(Path(name)) if Path(name).exists() else find(name)
    unknown = set(conns) - {k.name for k in c.connectors}
    if unknown:
        raise CapsuleError(
            f"--endpoint names no connector of {c.name}: {', '.join(sorted(unknown))}",
            hint=f"its connectors: {', '.join(k.name for k in c.connectors)}",
        )
    where = Endpoints(hub_url, device, signer, model_manifest, conns)
    done = apply_capsule(c, out, where)
    for p in (done.agent_toml, done.job_policy, done.report_template):
        click.echo(f"wrote {p}")


@capsule.command()
@click.argument("name")
@click.option(
    "--tuf",
    "hub_data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Publish into the hub's TUF repository (HUB_DATA with tuf/ and tuf-keys/).",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The hub's Ed25519 log key [default: HUB_DATA/hub-log.key with --tuf].",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Bundle here."
)
def publish(name: str, hub_data: Path | None, key_path: Path | None, out: Path | None) -> None:
    """Publish a capsule as a signed bundle: a TUF target of the hub (--tuf), or a file (--out).

    \b
    Examples:
      factoryops capsule publish quality-ndt --tuf hub-data
      factoryops capsule publish quality-ndt --key hub-data/hub-log.key --out dist/
    """
    from attestation.durable import write_atomically  # noqa: PLC0415 - only this command writes
    from attestation.signers.software import Ed25519FileSigner  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from capsules.bundle import make_bundle  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from capsules.catalogue import CATALOGUE  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    if (hub_data is None) == (out is None):
        raise click.UsageError("give exactly one of --tuf HUB_DATA and --out DIR")
    key = key_path or (hub_data / "hub-log.key" if hub_data else None)
    if key is None or not key.exists():
        raise click.UsageError(f"no Ed25519 key at {key}: pass --key")
    signer = Ed25519FileSigner.load_or_create(key)
    c = find(name)
    if hub_data is not None:
        from capsules.release import publish_capsule  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
        from cloud_sync.updates.repository import TufRepository  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        repo = TufRepository.open(hub_data / "tuf", hub_data / "tuf-keys")
        version = publish_capsule(repo, c, CATALOGUE / name, signer)
        click.echo(f"published {c.name} {c.version} as TUF targets version {version}")
        return
    assert out is not None  # one of the two, checked above
    data = make_bundle(c, CATALOGUE / name, signer)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{c.name}-{c.version}.capsule.json"
    write_atomically(path, data)
    click.echo(f"wrote {path} ({len(data):,} bytes)")


@capsule.command()
@click.argument("name")
@click.option("--hub", "hub_url", required=True, help="The hub serving /tuf/.")
@click.option(
    "--metadata",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The site's TUF metadata folder, holding the trusted root.json.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def fetch(name: str, hub_url: str, metadata: Path, out: Path) -> None:
    """Fetch the newest release of a capsule through TUF into OUT/NAME (then `capsule apply`).

    \b
    Example:
      factoryops capsule fetch quality-ndt --hub https://hub.example --metadata site/tuf \\
          --out site/capsules && factoryops capsule apply site/capsules/quality-ndt --out site
    """
    import tempfile  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from attestation.durable import write_atomically  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from capsules.release import fetch_capsule  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    with tempfile.TemporaryDirectory() as tmp:
        got = fetch_capsule(hub_url, metadata, name, Path(tmp))
    folder = out / got.capsule.name
    for rel, blob in got.files.items():
        dest = (folder / rel).resolve()
        if not dest.is_relative_to(folder.resolve()):
            raise CapsuleError(f"the bundle names a file outside its folder: {rel}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(dest, blob)
    click.echo(f"{folder}: {got.capsule.name} {got.capsule.version} (TUF target {got.target})")


@capsule.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trust",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="A trusted Ed25519 public key PEM (the hub's hub-log-key.pem); repeatable.",
)
def verify(bundle: Path, trust: tuple[Path, ...]) -> None:
    """Check a published capsule bundle: signature, every file's digest, the capsule.

    \b
    Example:
      factoryops capsule verify dist/quality-ndt-1.0.0.capsule.json --trust hub-log-key.pem
    """
    from capsules.bundle import verify_bundle  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    c, files = verify_bundle(bundle.read_bytes(), [p.read_bytes() for p in trust])
    click.echo(f"{bundle}: OK  {c.name} {c.version} ({len(files)} files, sha256 {c.digest[:16]})")


@capsule.command()
@click.argument("name")
@click.option("--modbus-port", type=int, default=5020, show_default=True, help="0 = any free.")
@click.option(
    "--speed", type=float, default=1.0, show_default=True, help="Plant seconds per wall second."
)
@click.option("--no-faults", is_flag=True, help="Serve normal operation only.")
@click.option("--duration", type=float, default=None, help="Stop after S wall seconds.")
def sim(name: str, modbus_port: int, speed: float, no_faults: bool, duration: float | None) -> None:
    """Serve the capsule's SIMULATED plant over Modbus TCP on 127.0.0.1 (Ctrl-C stops).

    \b
    Examples:
      factoryops capsule sim permanent-magnets --modbus-port 5020
      factoryops capsule sim logistics-routing --speed 60 --duration 120
    """
    import asyncio  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from capsules.sims.serve import CapsulePlant  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    c = find(name)

    async def serve() -> None:
        async with CapsulePlant(c, modbus_port, speed=speed, with_faults=not no_faults) as plant:
            click.echo(f"SIMULATED plant of capsule {c.name}: {plant.describe()}")
            click.echo(f"Modbus TCP 127.0.0.1:{plant.port} device id 1 (float32, big-endian)")
            for s in c.signals:
                click.echo(f"  holding {s.address:>3}  {s.name} [{s.unit}]")
            for f in c.simulator.faults if not no_faults else ():
                click.echo(f"fault {f.kind} at {f.start_s:g} s for {f.duration_s:g} s (plant time)")
            try:
                async with asyncio.timeout(duration):
                    await asyncio.Event().wait()
            except TimeoutError:
                return

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@capsule.group()
def playbook() -> None:
    """The playbook: who changed which capsule policy, when and why, in a transparency log.

    \b
    Examples:
      factoryops capsule playbook record site/quality-ndt --who ana --why "wider AE band" \\
          --dir hub-data/playbook --key hub-data/hub-log.key
      factoryops capsule playbook at quality-ndt 2026-12-05T08:00:00Z --dir hub-data/playbook \\
          --trust hub-data/hub-log-key.pem --out proof.json
      factoryops capsule playbook verify proof.json --trust hub-data/hub-log-key.pem
    """


_ORIGIN = click.option(
    "--origin",
    default="factoryops/playbook",
    show_default=True,
    help="The log's origin line (its checkpoints' key name).",
)
_TRUST = click.option(
    "--trust",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The hub's Ed25519 public key (HUB_DATA/hub-log-key.pem).",
)
_DIR = click.option(
    "--dir", "folder", type=click.Path(file_okay=False, path_type=Path), required=True
)


def _verifier(origin: str, pem: Path) -> Any:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from attestation.signednote import NoteVerifier  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    key = serialization.load_pem_public_key(pem.read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CapsuleError(f"{pem} is not an Ed25519 public key", hint="use hub-log-key.pem")
    return NoteVerifier.for_key(origin, key)


@playbook.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--who", required=True)
@click.option("--why", required=True)
@click.option("--at", "at", default=None, help="When it takes force (ISO 8601; default now).")
@_DIR
@_KEY
@_ORIGIN
def record(
    path: Path, who: str, why: str, at: str | None, folder: Path, key_path: Path, origin: str
) -> None:
    """Append a capsule policy (a capsule folder or capsule.toml) and sign the new checkpoint.

    \b
    Example:
      factoryops capsule playbook record site/quality-ndt --who ana --why "wider AE band" \\
          --dir hub-data/playbook --key hub-data/hub-log.key
    """
    import datetime as dt  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from attestation.signednote import NoteVerifier  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from attestation.signers.software import Ed25519FileSigner  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from capsules.playbook import Playbook  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    signer = Ed25519FileSigner.load_or_create(key_path)
    book = Playbook.open(folder, origin, NoteVerifier.for_key(origin, signer.public_key()))
    file = path / "capsule.toml" if path.is_dir() else path
    when = at or dt.datetime.now(dt.UTC).isoformat()
    entry, _ = book.record(file.read_bytes(), who=who, why=why, at=when, signer=signer)
    click.echo(
        f"entry {entry.index}: {entry.capsule} {entry.version} in force from {entry.at} "
        f"(by {entry.who}; {len(entry.diff.splitlines())} diff lines)"
    )


@playbook.command()
@_DIR
@_TRUST
@click.option("--capsule", "name", default=None)
@_ORIGIN
def history(folder: Path, trust: Path, name: str | None, origin: str) -> None:
    """Every logged change (checked against the signed checkpoint first).

    \b
    Example:
      factoryops capsule playbook history --dir hub-data/playbook --trust hub-log-key.pem
    """
    from capsules.playbook import Playbook  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    book = Playbook.open(folder, origin, _verifier(origin, trust))
    for e in book.history(name):
        click.echo(f"{e.index:>4}  {e.at}  {e.capsule} {e.version}  {e.who}: {e.why}")


@playbook.command("at")
@click.argument("name")
@click.argument("when")
@_DIR
@_TRUST
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_ORIGIN
def at_(name: str, when: str, folder: Path, trust: Path, out: Path, origin: str) -> None:
    """Write the policy of NAME in force at WHEN, with its proof, to --out (JSON).

    \b
    Example:
      factoryops capsule playbook at quality-ndt 2026-12-05T08:00:00Z --dir hub-data/playbook \\
          --trust hub-log-key.pem --out proof.json
    """
    from attestation.durable import write_atomically  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from capsules.playbook import Playbook  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    book = Playbook.open(folder, origin, _verifier(origin, trust))
    proof = book.in_force(name, when)
    write_atomically(out, (json.dumps(proof.to_json(), indent=2) + "\n").encode())
    click.echo(f"{out}: {name} {proof.entry.version} (entry {proof.entry.index}) at {when}")


@playbook.command("verify")
@click.argument("proof_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_TRUST
@_ORIGIN
def verify_proof(proof_path: Path, trust: Path, origin: str) -> None:
    """Check a policy-in-force proof offline: checkpoint signature, inclusion, policy digest.

    \b
    Example:
      factoryops capsule playbook verify proof.json --trust hub-log-key.pem
    """
    import base64  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from capsules.playbook import Entry, PlaybookProof, verify_in_force  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    doc = json.loads(proof_path.read_text(encoding="utf-8"))
    try:
        proof = PlaybookProof(
            Entry(**doc["entry"]),
            tuple(base64.b64decode(h, validate=True) for h in doc["path"]),
            doc["checkpoint"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CapsuleError(f"{proof_path}: not a playbook proof ({err})") from err
    e = verify_in_force(proof, _verifier(origin, trust))
    click.echo(f"{proof_path}: VALID  {e.capsule} {e.version} in force from {e.at} ({e.who})")


@capsule.command()
@click.argument("name")
@click.option("--seeds", type=int, default=5, show_default=True, help="Simulated runs.")
@click.option("--runs", type=int, default=5000, show_default=True, help="Monte Carlo draws.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
def feasibility(name: str, seeds: int, runs: int, out: Path | None) -> None:
    """Build the capsule's model on its simulator, evaluate its detectors on the simulated
    faults, and run the OBMI Monte Carlo over the assumptions and the measured detection rate.

    \b
    Example:
      factoryops capsule feasibility casting-foundry --out feasibility/
    """
    import tempfile  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from attestation.durable import write_atomically  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from capsules.detect import EVALUATION_SEEDS, evaluate, train_model  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from capsules.feasibility import monte_carlo  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    c = find(name)
    dt = 1.0 / max(s.sample_hz for s in c.signals)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = train_model(c, Path(tmp), dt)
        start = EVALUATION_SEEDS[0]
        ev = evaluate(c, manifest, dt, range(start, start + seeds))
    result = monte_carlo(c.feasibility, ev.outcomes(), runs=runs).as_json()
    for s in ev.scores:
        click.echo(
            f"{s.detector:>6}: {s.detected}/{s.episodes} simulated faults found, "
            f"{s.false_alarms_per_h:g} false alarms/h on fault-free runs"
        )
    npv, cur = result["npv"], result["currency"]
    click.echo(
        f"NPV over {result['runs']:,} draws: P10 {npv['p10']:,.0f} {cur}, "
        f"P50 {npv['p50']:,.0f} {cur}, P90 {npv['p90']:,.0f} {cur}; "
        f"payback P50 {result['payback_years']['p50']} years"
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        doc = {"evaluation": ev.as_json(), "feasibility": result}
        write_atomically(out / f"{c.name}.json", (json.dumps(doc, indent=2) + "\n").encode())
        click.echo(f"wrote {out / (c.name + '.json')}")
