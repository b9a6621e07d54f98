"""``factoryops agent``: run the edge agent from a TOML config, or check a config."""

from __future__ import annotations

import asyncio
import importlib
import signal
from pathlib import Path

import click

from agent.config import AgentConfig, DeviceConfig, load_config
from agent.errors import AgentError
from attestation.signers.base import Signer

__all__ = ["agent", "make_signer"]


def make_signer(device: DeviceConfig) -> Signer:
    """The signer a config asks for: the TPM key, or a software key file (development)."""
    if device.signer == "software":
        from attestation.signers.software import SoftwareSigner  # noqa: PLC0415

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


@agent.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="agent.toml (see docs/agent.md).",
)
def run(config_path: Path) -> None:
    """Run the agent until SIGINT/SIGTERM; committed windows survive any crash.

    \b
    Example:
      factoryops agent run --config /etc/factoryops/agent.toml
    """
    cfg = load_config(config_path)
    asyncio.run(_run(cfg))


async def _run(cfg: AgentConfig) -> None:
    from agent.runtime import AgentRuntime, connectors_from_config  # noqa: PLC0415

    scorer = None
    if cfg.model_manifest is not None:
        from agent.inference import OnnxScorer  # noqa: PLC0415 - loads onnxruntime

        scorer = OnnxScorer.open(cfg.model_manifest)
    runtime = AgentRuntime(cfg, make_signer(cfg.device), connectors_from_config(cfg), scorer=scorer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.run(stop)
