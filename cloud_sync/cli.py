"""``factoryops hub``: serve the hub, print its admin token, list and revoke devices."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any

import click

from cloud_sync.settings import COMMIT_GATHER_S, HubLimits, HubSettings

__all__ = ["hub"]

KEEP_ALIVE_S = 75
"""Seconds the hub keeps an idle connection (nginx's default too): above the agent's 60 s
(``agent.uplink.KEEPALIVE_S``), so the client, not the hub, ends an idle connection and never
sends on one the hub is closing."""

GC_YOUNG_THRESHOLD = 20_000
"""Net allocations of tracked objects between the serving hub's young collections (Python's
default: 700). In-flight uploads wait for their commit long enough that at 700 their objects
were promoted and rescanned by every older collection (ADR 0050)."""

_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("hub-data"),
    show_default=True,
    help="Where the database (SQLite), fleet CA and admin token live.",
)
_DB = click.option(
    "--db",
    "db_url",
    default=None,
    help="SQLAlchemy URL, e.g. postgresql+psycopg://hub@db/hub (default: SQLite).",
)


@click.group()
def hub() -> None:
    """The cloud hub: verifies and stores micro-proofs and answers receipt requests."""


@hub.command()
@_DATA_DIR
@_DB
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--allow-software-keys",
    is_flag=True,
    help="Accept devices whose key is not in a TPM (development only).",
)
@click.option(
    "--open-reads",
    is_flag=True,
    help="Let anyone who reaches the hub read devices, receipts and reports without login"
    " (a closed plant network, a demo). Writes always need a token or a role.",
)
@click.option(
    "--webhook",
    "webhook_url",
    default=None,
    help="POST billing events (closed months) here, HMAC-signed with DATA_DIR/webhook-secret.",
)
@click.option(
    "--log-key",
    "log_key_uri",
    default=None,
    help="Keep the log's Ed25519 key in an HSM: a pkcs11: URI (module-path, token, object,"
    " pin-source). Default: DATA_DIR/hub-log.key (mode 0600).",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log every HTTP request to stderr (uvicorn's access log). Off by default: the hub's"
    " /metrics count requests by route and status, and every write is in the audit log.",
)
@click.option(
    "--plain-http",
    is_flag=True,
    help="The hub serves plain HTTP on loopback (development): its session cookies go"
    " without Secure. Refused with a --host off loopback; otherwise put TLS in front.",
)
@click.option(
    "--embed-frame-ancestors",
    default="*",
    show_default=True,
    help="Who may frame the chart widget (/embed/devices/UTID): a CSP frame-ancestors list,"
    " e.g. 'https://scada.example'. Every other page may not be framed.",
)
@click.option(
    "--nats",
    "nats_url",
    default=None,
    help="Send fleet jobs to `hub worker` processes through NATS JetStream (nats://...)."
    " Default: the hub runs them itself, one at a time.",
)
@click.option(
    "--keep-alive",
    "keep_alive_s",
    default=KEEP_ALIVE_S,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Seconds an idle HTTP connection stays open. Longer than an agent's upload interval"
    " (10 s windows) and its own idle limit (60 s), so a gateway reuses its connection"
    " instead of paying a new one every upload (uvicorn's default is 5 s).",
)
@click.option(
    "--commit-gather-ms",
    default=COMMIT_GATHER_S * 1000,
    show_default=True,
    type=click.FloatRange(0, 100),
    help="Milliseconds an idle ingest writer waits so uploads arriving together share one"
    " commit (0: commit each at once). Adds at most this to an upload's latency.",
)
@click.option(
    "--body-budget-mib",
    default=HubLimits().max_held_body_bytes >> 20,
    show_default=True,
    type=click.IntRange(1, 1 << 20),
    help="MiB of request bodies the hub holds at once, all requests together; past it a"
    " request is answered 503 overloaded (Retry-After) before its body is read. At least"
    " what one upload may inflate to (64).",
)
def serve(
    data_dir: Path,
    db_url: str | None,
    host: str,
    port: int,
    allow_software_keys: bool,
    open_reads: bool,
    webhook_url: str | None,
    log_key_uri: str | None,
    access_log: bool,
    plain_http: bool,
    embed_frame_ancestors: str,
    nats_url: str | None,
    keep_alive_s: int,
    commit_gather_ms: float,
    body_budget_mib: int,
) -> None:
    """Serve the hub API and web page.

    \b
    Example:
      factoryops hub serve --data-dir /var/lib/factoryops-hub --port 8080
      HSM_PIN=... factoryops hub serve --log-key \\
        'pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=hub;object=hub-log;pin-source=env:HSM_PIN'
    """
    import ipaddress  # noqa: PLC0415 - only `serve` checks its host

    import uvicorn  # noqa: PLC0415 - only `serve` needs the server

    from cloud_sync.app import create_app  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    if plain_http and not (host == "localhost" or ipaddress.ip_address(host).is_loopback):
        raise click.BadParameter(
            f"{host} is not a loopback address: serve plain HTTP on 127.0.0.1 only, and put"
            " TLS in front of a hub others reach",
            param_hint="--plain-http",
        )
    settings = HubSettings.create(
        data_dir,
        db_url=db_url,
        allow_software_keys=allow_software_keys,
        log_key_uri=log_key_uri,
        open_reads=open_reads,
        webhook_url=webhook_url,
        plain_http=plain_http,
        embed_frame_ancestors=embed_frame_ancestors,
        nats_url=nats_url,
        limits=HubLimits(max_held_body_bytes=body_budget_mib << 20),
    )
    settings = dataclasses.replace(settings, commit_gather_s=commit_gather_ms / 1000)
    click.echo(f"hub on http://{host}:{port}  (fleet CA: {data_dir / 'fleet-ca.pem'})")
    app = create_app(settings)
    # What start-up built (modules, routes, models: ~10^5 objects) lives as long as the
    # process: out of the collector's way, so that each full collection, which scanned it
    # all (~0.1 s, the hub stopped), scans only what requests leave behind; and the youngest
    # generation collected every 20,000 net allocations, not 700: requests leave no cycles,
    # and at 700 a busy hub spent ~8 % of its CPU promoting and rescanning what was only
    # waiting for its commit (ADR 0050)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        timeout_keep_alive=keep_alive_s,
    )


@hub.command()
@_DATA_DIR
def token(data_dir: Path) -> None:
    """Print the admin bearer token (created on first use, mode 0600).

    \b
    Example:
      curl -H "Authorization: Bearer $(factoryops hub token)" ...
    """
    click.echo(HubSettings.create(data_dir).admin_token)


@hub.command()
@_DATA_DIR
@_DB
def migrate(data_dir: Path, db_url: str | None) -> None:
    """Bring the database schema to this version (the hub also does it at start).

    \b
    Example (before rolling out a new version to several replicas):
      factoryops hub migrate --db postgresql+psycopg://hub@db/hub
    """
    from cloud_sync.storage.migrate import migrate_url  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    revision = migrate_url(HubSettings.create(data_dir, db_url=db_url).db_url)
    click.echo(f"schema at revision {revision}")


@hub.command()
@_DATA_DIR
@_DB
def check(data_dir: Path, db_url: str | None) -> None:
    """Check that every stored window's leaves are there and hash to the root its
    micro-proof signs; exit 1 naming the first that do not.

    Run it after restoring a hub from a backup (the database first, then its
    hub.db-leaves file) or when a receipt answered corrupt_store.

    \b
    Example:
      factoryops hub check --data-dir hub-data
    """
    from cloud_sync.storage import Store  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.storecheck import check_store  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    store = Store.open(HubSettings.create(data_dir, db_url=db_url).db_url)
    try:
        found = check_store(
            store, progress=lambda n: click.echo(f"{n:,} windows checked", err=True)
        )
    finally:
        store.close()
    for problem in found.problems:
        click.echo(f"FAILED {problem}")
    summary = f"{found.windows:,} windows, {found.readings:,} readings"
    if found.failed:
        shown = len(found.problems)
        raise click.ClickException(f"{found.failed:,} of {summary} failed (first {shown} above)")
    click.echo(f"OK: {summary}; every window's leaves hash to the root its proof signs")


@hub.command("enroll-token")
@_DATA_DIR
@_DB
@click.option("--site", default="default", show_default=True, help="Site the device joins.")
@click.option(
    "--ttl",
    "ttl_s",
    default=86_400,
    show_default=True,
    type=click.IntRange(60, 30 * 86_400),
    help="Seconds until the token expires.",
)
def enroll_token(data_dir: Path, db_url: str | None, site: str, ttl_s: int) -> None:
    """Print a one-time enrollment token for a field technician.

    Also put the TPM makers' CA certificates (PEM) the hub should trust in
    DATA_DIR/ek-ca/ and, optionally, required PCR values in DATA_DIR/pcr-policy.json.

    \b
    Example:
      factoryops hub enroll-token --site plant-1 --ttl 3600
      # on the gateway:
      factoryops provision enroll --hub https://hub.example --token fo-enroll-...
    """
    import time  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from cloud_sync.enroll import new_enrollment_token  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.storage import Store  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    store = Store.open(HubSettings.create(data_dir, db_url=db_url).db_url)
    try:
        click.echo(new_enrollment_token(store, site=site, ttl_s=ttl_s, now_ns=time.time_ns()))
    finally:
        store.close()


@hub.command()
@_DATA_DIR
@_DB
def devices(data_dir: Path, db_url: str | None) -> None:
    """List enrolled devices and their chain heads.

    \b
    Example:
      factoryops hub devices --data-dir hub-data
    """
    from cloud_sync.storage import Store  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    store = Store.open(HubSettings.create(data_dir, db_url=db_url).db_url)
    for d in store.list_devices():
        state = "REVOKED" if d.revoked else "active"
        click.echo(
            f"{d.utid}  {d.name:<20} {d.key_kind:<8} windows={d.head_window + 1:<8}"
            f" readings={d.n_readings:<10} {state}"
        )
    store.close()


@hub.command()
@_DATA_DIR
@_DB
@click.argument("utid")
def revoke(data_dir: Path, db_url: str | None, utid: str) -> None:
    """Revoke a device: its further proofs are refused (what it sent stays).

    \b
    Example:
      factoryops hub revoke utid:3f1c...
    """
    from cloud_sync.errors import HubError  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.storage import Store  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    store = Store.open(HubSettings.create(data_dir, db_url=db_url).db_url)
    try:
        if not store.set_revoked(utid, True):
            raise HubError(f"{utid} is not enrolled here", hint="list devices with `hub devices`")
    finally:
        store.close()
    click.echo(f"revoked {utid}")


# Every command that talks to a hub over HTTP takes its operator API key the same way.
API_KEY = click.option(
    "--api-key",
    envvar="FACTORYOPS_API_KEY",
    show_envvar=True,
    default=None,
    help="An operator's API key (from `factoryops hub api-key NAME`); not needed on a hub "
    "serving --open-reads.",
)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The request headers that carry an operator API key, or none."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


@click.command()
@click.option("--hub", "hub_url", required=True, help="The hub's base URL.")
@click.option("--site", required=True, help="Site whose devices the report covers.")
@click.option("--from", "start", required=True, help="Start, ISO 8601 (UTC if no offset).")
@click.option("--to", "end", required=True, help="End (exclusive), ISO 8601.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="FILE.pdf or FILE.json: the format follows the suffix.",
)
@API_KEY
def report(hub_url: str, site: str, start: str, end: str, out: Path, api_key: str | None) -> None:
    """Download a site's proof report: the PDF with its signed JSON twin, or the JSON alone.

    OUT.pdf also writes OUT.json (the facts the PDF is drawn from) and OUT.json.cose (the
    hub's signature on them); OUT.json writes the JSON and its signature. Check them with
    `factoryops verify-report OUT.json --trust hub-log-key.pem`.

    \b
    Example:
      export FACTORYOPS_API_KEY=$(factoryops hub api-key alice)   # or --api-key
      factoryops report --hub http://hub:8080 --site plant-1 \\
          --from 2026-11-01 --to 2026-12-01 --out plant-1-november.pdf
    """
    import base64  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    import io  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    import zipfile  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from attestation.durable import write_atomically  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    pdf = out.suffix.lower() == ".pdf"
    r = _get_report(hub_url, site, start, end, "bundle" if pdf else "json", api_key)
    twin = out.with_suffix(".json")
    if pdf:
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            files = {out: z.read("report.pdf"), twin: z.read("report.json")}
            files[twin.with_name(twin.name + ".cose")] = z.read("report.json.cose")
    else:
        signature = base64.b64decode(r.headers["x-factoryops-report-signature"])
        files = {twin: r.content, twin.with_name(twin.name + ".cose"): signature}
    for path, data in files.items():
        write_atomically(path, data)
    sha = r.headers.get("x-factoryops-report-sha256", "")
    written = ", ".join(f"{p} ({len(d):,} bytes)" for p, d in files.items())
    click.echo(f"report of site {site}: {written}; report.json SHA-256 {sha}")


def _get_report(
    hub_url: str, site: str, start: str, end: str, fmt: str, api_key: str | None
) -> Any:
    import httpx  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from cloud_sync.errors import HubError  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    try:
        r = httpx.get(
            f"{hub_url.rstrip('/')}/v1/sites/{site}/report",
            params={"from": start, "to": end, "format": fmt},
            headers=auth_headers(api_key),
            timeout=120,
        )
    except httpx.HTTPError as err:
        raise HubError(f"cannot reach the hub at {hub_url}: {err}", hint="check --hub") from err
    if r.status_code != 200:
        doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        hint = (
            "pass an operator's key with --api-key or FACTORYOPS_API_KEY"
            if r.status_code in {401, 403}
            else ""
        )
        raise HubError(
            f"hub refused the report ({r.status_code}): {doc.get('error')}: "
            f"{doc.get('detail', r.text[:200])}",
            hint=hint,
        )
    return r


def _access(data_dir: Path, db_url: str | None) -> tuple[Any, Any]:
    import time  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from cloud_sync.access import Access  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.storage import Store  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    settings = HubSettings.create(data_dir, db_url=db_url)
    store = Store.open(settings.db_url)
    return Access(store.engine, settings.admin_token, time.time_ns), store


@hub.command()
@_DATA_DIR
@_DB
@click.argument("username")
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="SITE=ROLE",
    help="A role on a site: viewer, operator or admin (repeatable).",
)
@click.password_option(help="At least 12 characters (asked for when not given).")
def operator(
    data_dir: Path, db_url: str | None, username: str, roles: tuple[str, ...], password: str
) -> None:
    """Add an operator with roles per site (audited as the hub admin).

    \b
    Example:
      factoryops hub operator alice --role plant-1=operator --role plant-2=viewer
    """
    grants = {}
    for item in roles:
        site, sep, role = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not SITE=ROLE", param_hint="--role")
        grants[site] = role
    access, store = _access(data_dir, db_url)
    try:
        access.create_operator(username, password, grants, "admin (cli)")
    finally:
        store.close()
    click.echo(f"operator {username}: {grants or 'no roles yet'}")


@hub.command("api-key")
@_DATA_DIR
@_DB
@click.argument("username")
def api_key(data_dir: Path, db_url: str | None, username: str) -> None:
    """Print a new API key for an operator (shown once; only its hash is kept).

    \b
    Example:
      curl -H "Authorization: Bearer $(factoryops hub api-key alice)" http://hub:8080/v1/devices
    """
    access, store = _access(data_dir, db_url)
    try:
        click.echo(access.create_api_key(username, "admin (cli)"))
    finally:
        store.close()


def _mount_fleet() -> None:
    from cloud_sync.jobs.cli import job, worker  # noqa: PLC0415 - click only; jobs load lazily
    from cloud_sync.updates.cli import tuf  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    hub.add_command(job)
    hub.add_command(worker)
    hub.add_command(tuf)


_mount_fleet()
