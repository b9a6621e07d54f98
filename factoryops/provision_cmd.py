"""``factoryops provision``: the provisioning group plus ``rotate``, which needs the agent's
config and spool as well as the keystores, so it is wired here, in the composition root
(provisioning never imports the agent, ADR 0001)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from provisioning.cli import provision as _base

__all__ = ["provision", "rotate"]


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The agent's config: [device] names the key, [hub] the hub, [spool] the chain.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the new certificate goes (default: the spool's folder).",
)
@click.option(
    "--owner-auth",
    default=lambda: os.environ.get("FACTORYOPS_OWNER_AUTH"),
    help="The TPM owner hierarchy's authorization value, if it has one"
    " (or $FACTORYOPS_OWNER_AUTH).",
)
@click.option("--timeout", "timeout_s", type=float, default=15.0, show_default=True,
              help="Seconds to wait for the hub.")  # fmt: skip
def rotate(
    config_path: Path, state_dir: Path | None, owner_auth: str | None, timeout_s: float
) -> None:
    """Move this gateway to a new device key; the hub links the old and the new UTID.

    With the agent stopped and every window uploaded: makes a new key (in the TPM, or a new
    key file for a development key), signs the move with the old and the new key (a TPM's
    AK certifies the new key), and has the hub revoke the old UTID and enroll the new one
    continuing the same chain. Only then is the old key retired. If the hub refuses or
    cannot be reached, nothing changes.

    \b
    Examples:
      factoryops provision rotate --config /etc/factoryops/agent.toml
      factoryops provision rotate --config agent.toml --state-dir /var/lib/factoryops
    """
    from agent.cli import make_signer, stopped_gateway  # noqa: PLC0415 - imported when used
    from agent.errors import AgentError  # noqa: PLC0415 - imported when used
    from agent.recover import spool_backlog  # noqa: PLC0415 - imported when used
    from provisioning.rotate import (  # noqa: PLC0415 - imported when used
        ChainHead,
        KeyStage,
        SoftwareKeyStage,
        TpmKeyStage,
    )
    from provisioning.rotate import rotate as run  # noqa: PLC0415 - imported when used

    cfg, url = stopped_gateway(config_path, "there is no key to rotate", "rotate")
    window, head_hash, backlog = spool_backlog(cfg.spool.path)
    if backlog:
        raise AgentError(
            f"{backlog} windows in {cfg.spool.path} are not acknowledged by the hub yet:"
            " the old key's proofs must be uploaded before it is retired",
            hint="start the agent until `factoryops agent status` shows no backlog, stop it,"
            " and rotate again; nothing was changed",
        )
    state = state_dir or cfg.spool.path.parent
    stage: KeyStage = (
        SoftwareKeyStage(cfg.device.key_file)
        if cfg.device.signer == "software"
        else TpmKeyStage(cfg.device.tcti, state, owner_auth)
    )
    started = time.monotonic()
    done = run(
        lambda: make_signer(cfg.device),
        stage,
        url,
        ChainHead(window, head_hash),
        state_dir=state,
        progress=lambda text: click.echo(f"  - {text}"),
        timeout_s=timeout_s,
    )
    click.echo(f"  - {done.retired}")
    click.echo(
        f"rotated: {done.old_utid} -> {done.new_utid} after window {done.head_window}"
        f" ({time.monotonic() - started:.1f} s); start the agent: it signs with the new key"
    )


provision = click.Group(
    name="provision",
    commands={**_base.commands, "rotate": rotate},
    help=_base.help,
)
