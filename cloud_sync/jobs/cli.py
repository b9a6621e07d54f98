"""``factoryops hub worker`` and ``factoryops hub job submit|list|show|cancel|types``.

The worker takes jobs from NATS JetStream and writes their state to the hub database; the
job commands talk to a hub's API with an operator's API key (or the admin token).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import click

__all__ = ["job", "worker"]

_HUB = click.option(
    "--hub",
    "hub_url",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="FACTORYOPS_HUB",
    help="The hub's base URL.",
)
_KEY = click.option(
    "--api-key",
    envvar="FACTORYOPS_API_KEY",
    default=None,
    help="An operator's API key (fo-key-...) or the admin token; default: DATA_DIR/admin-token.",
)
_DATA = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("hub-data"),
    show_default=True,
    help="The hub's data directory (the admin token is read from there when no key is given).",
)


@click.command()
@_DATA
@click.option("--db", "db_url", default=None, help="The hub's SQLAlchemy URL (default: SQLite).")
@click.option(
    "--nats",
    "nats_url",
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="NATS server with JetStream.",
)
@click.option("--stream", default="FACTORYOPS_JOBS", show_default=True, help="Job stream name.")
@click.option("--name", default=None, help="Worker name in job rows (default: host-pid).")
@click.option(
    "--ack-wait",
    "ack_wait_s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(1.0, 3600.0),
    help="Seconds without a heartbeat after which a job goes to another worker.",
)
@click.option(
    "--max-runs",
    default=3,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Runs without an outcome (the worker died) before a job is dead-lettered.",
)
def worker(
    data_dir: Path,
    db_url: str | None,
    nats_url: str,
    stream: str,
    name: str | None,
    ack_wait_s: float,
    max_runs: int,
) -> None:
    """Run fleet jobs from the NATS JetStream queue until SIGTERM or Ctrl-C.

    \b
    Example:
      factoryops hub worker --nats nats://127.0.0.1:4222 --db postgresql+psycopg://hub@db/hub
    """
    import asyncio  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    import signal  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    import time  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from cloud_sync.jobs.fleet import fleet_job_types  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.jobs.jetstream import QueueConfig, serve_worker  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.jobs.store import JobStore  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.settings import HubSettings  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from cloud_sync.storage import Store  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    settings = HubSettings.create(data_dir, db_url=db_url)
    db = Store.open(settings.db_url)  # migrates, like the hub
    cfg = QueueConfig.for_stream(nats_url, stream, ack_wait_s=ack_wait_s, max_runs=max_runs)
    me = name or f"{socket.gethostname()}-{os.getpid()}"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_worker(
            cfg, JobStore(db.engine, time.time_ns), fleet_job_types(), name=me,
            data_dir=data_dir, db_url=settings.db_url, stop=stop,
        )  # fmt: skip

    click.echo(f"worker {me}: jobs from {cfg.stream} on {nats_url}", err=True)
    try:
        asyncio.run(main())
    finally:
        db.close()


@click.group()
def job() -> None:
    """Submit, list, show and cancel fleet jobs on a hub.

    \b
    Example:
      factoryops hub job submit selftest --param steps=20
      factoryops hub job show 7
    """


def _token(api_key: str | None, data_dir: Path) -> str:
    from cloud_sync.errors import HubError  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    if api_key:
        return api_key
    path = data_dir / "admin-token"
    if not path.exists():
        raise HubError("no API key given", hint="pass --api-key, or the hub's --data-dir")
    return path.read_text(encoding="ascii").strip()


def _call(method: str, url: str, token: str, body: Any = None) -> dict[str, Any]:
    import httpx  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from cloud_sync.errors import HubError  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    try:
        r = httpx.request(
            method, url, json=body, headers={"authorization": f"Bearer {token}"}, timeout=30
        )
    except httpx.HTTPError as err:
        raise HubError(f"cannot reach the hub at {url}: {err}", hint="check --hub") from err
    doc: dict[str, Any] = r.json() if r.content else {}
    if r.status_code >= 400:
        raise HubError(f"hub refused: {doc.get('error')}: {doc.get('detail', r.text[:300])}")
    return doc


def _value(text: str) -> Any:
    """``--param k=v``: v as JSON when it parses (numbers, true, lists), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@job.command()
@_HUB
@_KEY
@_DATA
@click.argument("job_type")
@click.option("--site", default=None, help="The site the job belongs to (default: fleet-wide).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--params-json", default=None, help="All parameters as one JSON object.")
@click.option("--wait", is_flag=True, help="Wait until the job ends; exit 1 unless it succeeded.")
def submit(
    hub_url: str,
    api_key: str | None,
    data_dir: Path,
    job_type: str,
    site: str | None,
    params: tuple[str, ...],
    params_json: str | None,
    wait: bool,
) -> None:
    """Queue a job and print its id.

    \b
    Example:
      factoryops hub job submit selftest --param steps=10 --param step_seconds=0.5 --wait
    """
    doc: dict[str, Any] = json.loads(params_json) if params_json else {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        doc[key] = _value(value)
    token = _token(api_key, data_dir)
    got = _call(
        "POST",
        f"{hub_url.rstrip('/')}/v1/jobs",
        token,
        {"type": job_type, "params": doc, "site": site},
    )
    click.echo(f"job {got['id']} {got['state']}  {hub_url.rstrip('/')}/jobs/{got['id']}")
    if wait:
        _wait(hub_url, token, int(got["id"]))


def _wait(hub_url: str, token: str, job_id: int) -> dict[str, Any]:
    import threading  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    from cloud_sync.errors import HubError  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    tick = threading.Event()
    last = ""
    while True:
        got = _call("GET", f"{hub_url.rstrip('/')}/v1/jobs/{job_id}", token)
        line = f"  {got['state']:<9} {got['progress'] * 100:5.1f} %  {got['message']}"
        if line != last:
            click.echo(line, err=True)
            last = line
        if got["state"] in ("succeeded", "failed", "cancelled", "dead"):
            break
        tick.wait(1.0)  # polling a remote job's state
    if got["state"] != "succeeded":
        raise HubError(f"job {job_id} {got['state']}: {got.get('error')}")
    return got


@job.command("list")
@_HUB
@_KEY
@_DATA
@click.option("--state", default=None, help="Only jobs in this state.")
def list_(hub_url: str, api_key: str | None, data_dir: Path, state: str | None) -> None:
    """List the newest jobs.

    \b
    Example:
      factoryops hub job list --state running
    """
    url = f"{hub_url.rstrip('/')}/v1/jobs" + (f"?state={state}" if state else "")
    for j in _call("GET", url, _token(api_key, data_dir))["jobs"]:
        click.echo(
            f"{j['id']:>6}  {j['type']:<14} {j['state']:<9} {j['progress'] * 100:5.1f} %"
            f"  attempts={j['attempts']}  {j['site'] or 'fleet'}  {j['message']}"
        )


@job.command()
@_HUB
@_KEY
@_DATA
@click.argument("job_id", type=int)
def show(hub_url: str, api_key: str | None, data_dir: Path, job_id: int) -> None:
    """Print a job as JSON (state, progress, result, error, traceback, logs).

    \b
    Example:
      factoryops hub job show 7
    """
    got = _call("GET", f"{hub_url.rstrip('/')}/v1/jobs/{job_id}", _token(api_key, data_dir))
    click.echo(json.dumps(got, indent=2))


@job.command()
@_HUB
@_KEY
@_DATA
@click.argument("job_id", type=int)
def cancel(hub_url: str, api_key: str | None, data_dir: Path, job_id: int) -> None:
    """Cancel a job (a running job stops at its next progress report).

    \b
    Example:
      factoryops hub job cancel 7
    """
    url = f"{hub_url.rstrip('/')}/v1/jobs/{job_id}/cancel"
    got = _call("POST", url, _token(api_key, data_dir))
    click.echo(f"job {job_id} {got['state']}: {got['message']}")


@job.command()
@_HUB
@_KEY
@_DATA
def types(hub_url: str, api_key: str | None, data_dir: Path) -> None:
    """List the job types the hub accepts and their parameters.

    \b
    Example:
      factoryops hub job types
    """
    got = _call("GET", f"{hub_url.rstrip('/')}/v1/jobs/types", _token(api_key, data_dir))
    for name, t in got["types"].items():
        fields = ", ".join(t["params"].get("properties", {}))
        click.echo(f"{name:<16} {t['summary']}  ({fields})")
