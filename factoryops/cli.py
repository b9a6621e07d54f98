"""The ``factoryops`` command: mounts each package's click group and handles errors once.

Every package raises its own root error with a ``hint``; this is the one place that
turns them into a message, a hint and a non-zero exit (``--debug`` re-raises).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from attestation.errors import Fixable
from factoryops.lazy import LazyGroup

__all__ = ["main"]

# command name -> "module:attribute" of a click command or group. Imported lazily so
# `factoryops verify` does not pay for onnxruntime or FastAPI.
COMMANDS: dict[str, str] = {
    "verify": "factoryops.verify_cmd:verify",
    "verify-report": "factoryops.verify_report_cmd:verify_report_cmd",
    "bench": "factoryops.bench:bench",
    "fleet": "factoryops.fleet:fleet",
    "hub": "cloud_sync.cli:hub",
    "agent": "agent.cli:agent",
    "demo": "factoryops.demo:demo",
    "sim": "hil_tests.cli:sim",
    "hil": "hil_tests.cli:hil",
    "model": "models_onnx.cli:model",
    "provision": "factoryops.provision_cmd:provision",
    "report": "cloud_sync.cli:report",
    "pilot": "factoryops.pilot:pilot",
    "capsule": "capsules.cli:capsule",
}


@click.group(
    cls=LazyGroup, targets=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
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


def main(argv: list[str] | None = None) -> Any:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        return cli.main(args=argv, prog_name="factoryops", standalone_mode=True)
    except Fixable as err:
        if debug:
            raise
        click.secho(f"error: {err}", fg="red", err=True)
        hint = getattr(err, "hint", "")
        if hint:
            click.echo(f"hint: {hint}", err=True)
        sys.exit(1)
