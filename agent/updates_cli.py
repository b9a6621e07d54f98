"""``factoryops agent update trust|check|rollback|status``.

The update client runs beside the agent (a systemd timer, or by hand): it reads the recent
readings from the agent's spool (read-only) for the health check, and swaps the model the
running agent watches.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agent.config import AgentConfig, load_config
from agent.errors import AgentError
from agent.spoolread import recent_readings

if TYPE_CHECKING:
    from agent.updates import ModelUpdates

__all__ = ["recent_readings", "update"]

_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="agent.toml (its [hub] url, [spool] path and [model] manifest are used).",
)
_CHANNEL = [
    click.option("--family", default="autoencoder", show_default=True, help="Model family."),
    click.option("--site", default="fleet", show_default=True, help="Model channel (site)."),
]


def _channel(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed(_CHANNEL):
        f = opt(f)
    return f


def _updates(cfg: AgentConfig, family: str, site: str) -> ModelUpdates:
    from agent.updates import ModelUpdates  # noqa: PLC0415 - loads python-tuf and onnxruntime

    if cfg.model_manifest is None:
        raise AgentError("the config has no [model] manifest to update", hint="add [model]")
    if not cfg.hub.url:
        raise AgentError("the config has no [hub] url to fetch updates from", hint="add [hub]")
    return ModelUpdates(
        cfg.spool.path.parent / "updates" / family / site,
        f"{cfg.hub.url.rstrip('/')}/tuf",
        family,
        site,
        cfg.model_manifest,
    )


@click.group()
def update() -> None:
    """Signed model updates from the hub (TUF): trust a root, check, roll back.

    \b
    Example:
      factoryops agent update trust --config agent.toml hub-data/tuf/metadata/1.root.json
      factoryops agent update check --config agent.toml --family autoencoder --site fleet
    """


@update.command()
@_CONFIG
@_channel
@click.argument("root_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def trust(config_path: Path, family: str, site: str, root_json: Path) -> None:
    """Install the hub's TUF root as this agent's trust anchor (once, at enrollment)."""
    from agent.updates import install_trusted_root  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    u = _updates(load_config(config_path), family, site)
    version = install_trusted_root(u.state_dir, root_json.read_bytes())
    click.echo(f"trusting root version {version} for {family}/{site}")


@update.command()
@_CONFIG
@_channel
def check(config_path: Path, family: str, site: str) -> None:
    """Fetch, verify and health-check the newest model; install it if healthy."""
    cfg = load_config(config_path)
    u = _updates(cfg, family, site)
    result = u.check(recent_readings(cfg.spool.path))
    click.echo(json.dumps({"outcome": result.outcome, "detail": result.detail,
                           "running": result.running, "available": result.available}))  # fmt: skip
    if result.outcome in ("refused", "unhealthy"):
        raise SystemExit(1)


@update.command()
@_CONFIG
@_channel
def rollback(config_path: Path, family: str, site: str) -> None:
    """Go back to the previous model version (the running one is marked refused)."""
    u = _updates(load_config(config_path), family, site)
    click.echo(u.rollback().detail)


@update.command("status")
@_CONFIG
@_channel
def status(config_path: Path, family: str, site: str) -> None:
    """The model versions: running and available (and the spool's outbox counts).

    The agent's health as a whole is `factoryops agent status`.

    \b
    Example:
      factoryops agent update status --config /etc/factoryops/agent.toml
    """
    cfg = load_config(config_path)
    doc: dict[str, object] = {"device": cfg.device.name, "hub": cfg.hub.url}
    if cfg.spool.path.exists():
        with sqlite3.connect(f"file:{cfg.spool.path}?mode=ro", uri=True) as db:
            doc["outbox"] = dict(db.execute("SELECT outbox, count(*) FROM windows GROUP BY outbox"))
    if cfg.model_manifest is not None and cfg.hub.url:
        u = _updates(cfg, family, site)
        doc["model"] = {"manifest": str(cfg.model_manifest), **u.status()}
    click.echo(json.dumps(doc, indent=2))
