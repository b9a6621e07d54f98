"""``factoryops pilot``: start the Streamlit pilot sandbox (``pilot_app.py``) for a hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

__all__ = ["pilot"]

APP = Path(__file__).with_name("pilot_app.py")


@click.command()
@click.option("--hub", "hub_url", required=True, help="The hub's base URL.")
@click.option(
    "--admin-token",
    envvar="FACTORYOPS_HUB_ADMIN_TOKEN",
    show_envvar=True,
    required=True,
    help="The hub's admin token: registers the pilot's software key (`factoryops hub token`).",
)
@click.option(
    "--api-key",
    envvar="FACTORYOPS_API_KEY",
    show_envvar=True,
    default=None,
    help="An operator's API key, to read receipts on a hub without --open-reads.",
)
@click.option("--port", type=int, default=8501, show_default=True, help="The page's port.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where models, the pilot key and receipts go (default: a new temporary folder).",
)
def pilot(
    hub_url: str, admin_token: str, api_key: str | None, port: int, workdir: Path | None
) -> None:
    """The pilot sandbox: upload a plant CSV, map its columns, run a model, see anomalies,
    sign the data as micro-proofs at the hub, check receipts, export a pilot report.

    The hub must accept software keys (a sandbox: `hub serve --allow-software-keys`).

    \b
    Example:
      factoryops pilot --hub http://127.0.0.1:8080 --admin-token "$(cat hub-data/admin-token)"
      # then open http://127.0.0.1:8501
    """
    env = dict(os.environ, FACTORYOPS_PILOT_HUB=hub_url, FACTORYOPS_PILOT_ADMIN_TOKEN=admin_token)
    if api_key:
        env["FACTORYOPS_API_KEY"] = api_key
    if workdir is not None:
        env["FACTORYOPS_PILOT_DIR"] = str(workdir.resolve())
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    click.echo(f"pilot sandbox on http://127.0.0.1:{port} for hub {hub_url} (Ctrl-C stops it)")
    sys.stdout.flush()
    # become Streamlit (no child left behind when a service manager or a test stops us)
    os.execve(sys.executable, cmd, env)  # noqa: S606 - our own interpreter and app file
