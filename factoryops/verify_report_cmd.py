"""``factoryops verify-report``: check a proof report's JSON twin against the hub's signature."""

from __future__ import annotations

import json
from pathlib import Path

import click

from attestation import load_anchors
from attestation.errors import AttestationError, MalformedInput
from attestation.reportsig import verify_report

__all__ = ["verify_report_cmd"]


@click.command("verify-report")
@click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trust",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The hub's log key (PEM), from the hub's operator.",
)
@click.option(
    "--signature",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The detached signature (default: REPORT.cose beside the report).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable verdict.")
def verify_report_cmd(report: Path, trust: Path, signature: Path | None, as_json: bool) -> None:
    """Check that REPORT (a report.json) is what the hub signed; print its SHA-256, which must
    match the one on the PDF's cover. Exit 0 valid, 1 invalid.

    \b
    Example:
      factoryops verify-report plant-1-november.json --trust hub-log-key.pem
    """
    sig_path = signature or report.with_name(report.name + ".cose")
    hubs = load_anchors([trust]).hub_keys
    if not hubs:
        raise MalformedInput(str(trust), "not an Ed25519 hub key")
    try:
        sig = sig_path.read_bytes()
    except OSError as err:
        raise MalformedInput(str(sig_path), f"cannot read the signature: {err.strerror}") from err
    data = report.read_bytes()
    try:
        sha = verify_report(data, sig, hubs[0])
    except AttestationError as err:
        if as_json:
            click.echo(json.dumps({"valid": False, "error": str(err)}))
        else:
            click.echo(f"INVALID: {err}")
        raise SystemExit(1) from err
    if as_json:
        click.echo(json.dumps({"valid": True, "sha256": sha}))
    else:
        click.echo(f"VALID: {report} is what the hub signed; SHA-256 {sha}")
