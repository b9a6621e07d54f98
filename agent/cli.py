"""``factoryops agent``: run the edge agent from a TOML config, or check a config."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import logging
import signal
import time
from pathlib import Path

import click
import httpx

from agent import eventloop
from agent.config import AgentConfig, DeviceConfig, load_config
from agent.errors import AgentError, UplinkRefused
from agent.health import STATUS_FILE, HealthLimits, read_status, render_status
from agent.logsetup import LEVELS, configure_logging
from agent.uplink import describe_failure
from attestation.signers.base import Signer

__all__ = ["agent", "make_signer"]


def make_signer(device: DeviceConfig) -> Signer:
    """The signer a config asks for: the TPM key, or a software key file (development)."""
    if device.signer == "software":
        from attestation.signers.software import SoftwareSigner  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        return SoftwareSigner.load_or_create(device.key_file)
    try:
        tpm = importlib.import_module("attestation.signers.tpm")
    except ImportError as err:
        raise AgentError(
            f'signer = "tpm" but the TPM support is not installed: {err}',
            hint="install the tpm extra (apt install libtss2-dev; uv sync --extra tpm)",
        ) from err
    signer: Signer = tpm.TpmSigner.open(device.tcti)
    return signer


def require_stopped(cfg: AgentConfig, why: str) -> None:
    """Refuse while the agent of ``cfg`` runs (its status file names a live pid)."""
    doc, verdict = read_status(
        cfg.spool.path.with_name(STATUS_FILE), time.time_ns(), HealthLimits()
    )
    if verdict.running and doc is not None:
        raise AgentError(
            f"the agent is running (pid {doc['pid']}): {why}",
            hint="stop it first (systemctl stop factoryops-agent), then run this again",
        )


def stopped_gateway(config_path: Path, without: str, command: str) -> tuple[AgentConfig, str]:
    """The config of a gateway whose agent is stopped, with a hub and an existing device key
    (what ``recover`` and ``provision rotate`` need): its config and hub URL, or one clear
    refusal. ``without``: what is missing without a hub or key; ``command``: who asks."""
    cfg = load_config(config_path)
    if not cfg.hub.url:
        raise AgentError(
            f"{config_path}: [hub] url is not set: {without}",
            hint="set [hub] url to the hub this device uploads to",
        )
    require_stopped(cfg, f"{command} changes its state")
    if cfg.device.signer == "software" and not cfg.device.key_file.exists():
        raise AgentError(  # make_signer would create one: a new key has no chain
            f"no device key at {cfg.device.key_file}: {without}",
            hint=f"check [device] key_file; a new key is registered, not given to {command}",
        )
    return cfg, cfg.hub.url


@click.group()
def agent() -> None:
    """The edge agent: acquire, sign windows of readings, spool, sync to the hub."""


@agent.command("check-config")
@click.argument("config", type=click.Path(path_type=Path))
def check_config(config: Path) -> None:
    """Validate an agent.toml; exit 1 naming the key, file and line of the first problem.

    \b
    Example:
      factoryops agent check-config /etc/factoryops/agent.toml
    """
    cfg = load_config(config)
    tags = sum(len(d.tags) for d in cfg.modbus)
    parts = [
        f"device={cfg.device.name}",
        f"signer={cfg.device.signer}",
        f"modbus devices={len(cfg.modbus)} tags={tags}",
        *(f"{section}={len(items)}" for section, items in sorted(cfg.connectors.items()) if items),
        f"hub={cfg.hub.url or '(offline)'}",
    ]
    click.echo(f"{config}: OK  " + " ".join(parts))


_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="agent.toml (see docs/agent.md).",
)


@agent.command()
@_CONFIG
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default=None,
    help="Overrides [log] level (default INFO).",
)
@click.option("-v", "--verbose", count=True, help="-v: INFO, -vv: DEBUG (as --log-level).")
def run(config_path: Path, log_level: str | None, verbose: int) -> None:
    """Run the agent until SIGINT/SIGTERM; committed windows survive any crash.

    Logs one start-up line, then a health line every [log] health_interval_s (and at
    once when a problem appears or clears); `factoryops agent status` reads its status.

    \b
    Examples:
      factoryops agent run --config /etc/factoryops/agent.toml
      factoryops agent run --config agent.toml --log-level DEBUG
    """
    from agent.fragments import boot  # noqa: PLC0415 - python-tuf, only for `agent run`

    cfg, rolled_back = boot(config_path)  # with the installed signed fragments (ADR 0040)
    level = (log_level or "").upper() or ("DEBUG" if verbose > 1 else "")
    level = level or ("INFO" if verbose == 1 else cfg.log.level)
    configure_logging(level, cfg.log.format)
    for r in rolled_back:
        logging.getLogger("agent.fragments").error("config fragment %s", r.detail)
    _check_writable(cfg.spool.path.parent)
    eventloop.run(_run(cfg, config_path))


def _check_writable(folder: Path) -> None:
    """The spool's folder must be writable before anything starts (under systemd's
    ProtectSystem=strict only StateDirectory= is: /var/lib/factoryops)."""
    probe = folder / ".factoryops-write-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise AgentError(
            f"the spool folder {folder} is not writable: {err.strerror}",
            hint="set [spool] path to a writable place; under systemd use an absolute path "
            "in /var/lib/factoryops (the unit's StateDirectory)",
        ) from err


@agent.command()
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="The status document as JSON.")
def status(config_path: Path, as_json: bool) -> None:
    """Show a running agent's health: connectors, spool, uplink, model, identity.

    Reads the status file the agent writes next to its spool every [log]
    status_interval_s. Exit 0 healthy, 1 running with problems, 2 not running.

    \b
    Examples:
      factoryops agent status --config /etc/factoryops/agent.toml
      factoryops agent status --config agent.toml --json | jq .uplink
    """
    cfg = load_config(config_path)
    path = cfg.spool.path.with_name(STATUS_FILE)
    now = time.time_ns()
    doc, verdict = read_status(path, now, HealthLimits())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "running": verdict.running,
                    "why_not_running": verdict.why_not_running or None,
                    "problems": list(verdict.problems),
                    "status": doc,
                },
                indent=2,
            )
        )
    elif doc is None:
        click.echo(f"agent {cfg.device.name} is not running: {verdict.why_not_running}")
        click.echo(f"hint: start it with `factoryops agent run --config {config_path}` "
                   "or `systemctl start factoryops-agent`")  # fmt: skip
    else:
        for line in render_status(doc, verdict, now):
            click.echo(line)
        if (doc.get("uplink") or {}).get("stopped_code") == "fork":
            click.echo(f"hint: stop the agent, run `factoryops agent recover --config "
                       f"{config_path}`, start it again (docs/agent.md, recovery)")  # fmt: skip
        if not verdict.running:
            why = "" if doc.get("stopped_ns") else "`journalctl -u factoryops-agent` says why; "
            click.echo(f"hint: {why}start it with `factoryops agent run --config {config_path}` "
                       "or `systemctl start factoryops-agent`")  # fmt: skip
    raise SystemExit(verdict.exit_code)


@agent.command()
@_CONFIG
def recover(config_path: Path) -> None:
    """Continue the hub's chain after the spool was lost, corrupt or forked (ADR 0027).

    With the agent stopped: asks the hub for this device's chain head, moves a spool the
    hub refused aside to spool.db.forked-<time> (its readings kept) and starts a new one
    after the head; the first window it seals signs a reset record. On a healthy gateway
    it changes nothing and says so.

    \b
    Examples:
      factoryops agent recover --config /etc/factoryops/agent.toml
    """
    from agent.recover import fetch_head, recover_spool  # noqa: PLC0415 - httpx only here

    cfg, url = stopped_gateway(config_path, "there is no chain to continue", "recover")
    try:
        head = asyncio.run(fetch_head(url, make_signer(cfg.device), cfg.hub.timeout_s))
    except (httpx.HTTPError, UplinkRefused) as err:
        raise AgentError(
            f"cannot learn the chain head from {url}: {describe_failure(err)}",
            hint="check [hub] url and that the hub is up; nothing was changed",
        ) from err
    click.echo(recover_spool(cfg.spool.path, head, dt.datetime.now(dt.UTC)))


async def _run(cfg: AgentConfig, config_path: Path) -> None:
    from agent.runtime import build_runtime  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from agent.update_loop import update_loop  # noqa: PLC0415 - python-tuf, only when run

    scorer = None
    if cfg.model_manifest is not None:
        from agent.inference import OnnxScorer  # noqa: PLC0415 - loads onnxruntime

        scorer = OnnxScorer.open(cfg.model_manifest, cfg.scoring)
    runtime = build_runtime(
        cfg, make_signer(cfg.device), scorer=scorer, updates=update_loop(cfg, config_path, scorer)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.run(stop)


def _mount_updates() -> None:
    from agent.updates_cli import update  # noqa: PLC0415 - click only until used

    agent.add_command(update)


_mount_updates()
