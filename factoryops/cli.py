"""The ``factoryops`` command: mounts each package's click group and handles errors once.

Every package raises its own root error with a ``hint``; this is the one place that
turns them into a message, a hint and a non-zero exit (``--debug`` re-raises).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

__all__ = ["main"]

# command name -> "module:attribute" of a click command or group. Imported lazily so
# `factoryops verify` does not pay for onnxruntime or FastAPI.
COMMANDS: dict[str, str] = {
    "verify": "factoryops.verify_cmd:verify",
    "bench": "factoryops.bench:bench",
    "hub": "cloud_sync.cli:hub",
    "agent": "agent.cli:agent",
    "demo": "factoryops.demo:demo",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """FactoryOps Edge: signed micro-proofs for every factory reading.

    \b
    Examples:
      factoryops demo --duration 30 --workdir /tmp/fo
      factoryops verify /tmp/fo/receipts/sample.json --trust /tmp/fo/trust/fleet-ca.pem
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _root_errors() -> tuple[type[BaseException], ...]:
    """The root error of each package that is importable (each carries a ``hint``)."""
    roots: list[type[BaseException]] = []
    for module, name in (
        ("attestation.errors", "AttestationError"),
        ("agent.errors", "AgentError"),
        ("cloud_sync.errors", "HubError"),
        ("provisioning.errors", "ProvisioningError"),
        ("models_onnx.errors", "ModelError"),
        ("hil_tests.errors", "HilError"),
    ):
        try:
            roots.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(roots)


def main(argv: list[str] | None = None) -> Any:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        return cli.main(args=argv, prog_name="factoryops", standalone_mode=True)
    except _root_errors() as err:
        if debug:
            raise
        click.secho(f"error: {err}", fg="red", err=True)
        hint = getattr(err, "hint", "")
        if hint:
            click.echo(f"hint: {hint}", err=True)
        sys.exit(1)
