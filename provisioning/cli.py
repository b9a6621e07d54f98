"""``factoryops provision``: what a field technician runs on a gateway.

``init`` works offline (finds and checks the TPM, makes the keys, prints the UTID);
``enroll`` is the only step that needs the hub; ``status`` and ``diagnose`` explain the
state and print a fix for each problem. Every step is idempotent.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx

from attestation.errors import Fixable
from provisioning.errors import ProvisioningError

if TYPE_CHECKING:
    from provisioning.tpm_identity import TpmIdentity

__all__ = ["provision"]

_TCTI = click.option(
    "--tcti",
    default=lambda: os.environ.get("FACTORYOPS_TCTI", "device:/dev/tpmrm0"),
    show_default="device:/dev/tpmrm0 or $FACTORYOPS_TCTI",
    help="How to reach the TPM, e.g. swtpm:host=127.0.0.1,port=2321 for a SIMULATED one.",
)
_OWNER_AUTH = click.option(
    "--owner-auth",
    default=lambda: os.environ.get("FACTORYOPS_OWNER_AUTH"),
    help="The TPM owner hierarchy's authorization value, if it has one"
    " (or $FACTORYOPS_OWNER_AUTH).",
)
_STATE = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/factoryops"),
    show_default=True,
    help="Where the device certificate and enrollment record are kept.",
)


def _identity(tcti: str, owner_auth: str | None = None) -> TpmIdentity:
    try:
        from provisioning.tpm_identity import TpmIdentity  # noqa: PLC0415 - the tpm extra
    except ImportError as err:
        raise ProvisioningError(
            f"TPM support is not installed: {err}",
            hint="apt install libtss2-dev pkg-config; uv sync --extra tpm",
        ) from err
    return TpmIdentity(tcti, owner_auth=owner_auth)


def _step(text: str) -> None:
    click.echo(f"  - {text}")


@click.group()
def provision() -> None:
    """Set up a gateway's TPM identity and enroll it with the hub.

    \b
    Examples:
      factoryops provision init
      factoryops provision enroll --hub https://hub.example --token fo-enroll-...
      factoryops provision status
      factoryops provision diagnose --hub https://hub.example
      factoryops provision rotate --config /etc/factoryops/agent.toml
    """


@provision.command()
@_TCTI
@_OWNER_AUTH
def init(tcti: str, owner_auth: str | None) -> None:
    """Find and check the TPM, create the signing key and AK, print the UTID (offline).

    \b
    Example:
      factoryops provision init --tcti device:/dev/tpmrm0
    """
    from attestation.utid import utid_bytes, utid_text  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    with _identity(tcti, owner_auth) as ident:
        _step(f"TPM answers at {tcti}")
        cert = ident.ek_certificate()
        _step(f"EK certificate present ({len(cert)} bytes)")
        before = ident.has_keys()
        ident.ensure_keys()
        for what, had in before.items():
            _step(f"{what.replace('_', ' ')}: {'kept' if had else 'created'}")
        from tpm2_pytss.types import TPM2B_PUBLIC  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        key, _ = TPM2B_PUBLIC.unmarshal(ident.evidence().key_public)
    click.echo(utid_text(utid_bytes(key.publicArea.to_der())))


@provision.command()
@_TCTI
@_OWNER_AUTH
@_STATE
@click.option("--hub", "hub_url", required=True, help="The hub's base URL.")
@click.option("--token", required=True, help="One-time token from `factoryops hub enroll-token`.")
@click.option(
    "--name", default=lambda: os.uname().nodename, help="Device name (default: hostname)."
)
def enroll(
    tcti: str, owner_auth: str | None, state_dir: Path, hub_url: str, token: str, name: str
) -> None:
    """Prove this TPM to the hub and receive the device certificate.

    \b
    Example:
      factoryops provision enroll --hub https://hub.example --token fo-enroll-...
    """
    from provisioning.enroll import enroll as run  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    with _identity(tcti, owner_auth) as ident:
        done, changed = run(ident, hub_url, token, name=name, state_dir=state_dir, progress=_step)
    click.echo(f"{'enrolled' if changed else 'already enrolled'}: {done.utid} with {done.hub_url}")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _checks(tcti: str, state_dir: Path, hub_url: str | None) -> list[Check]:
    from provisioning.enroll import read_enrollment  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    out: list[Check] = []
    try:
        ident = _identity(tcti)
    except Fixable as err:
        return [Check("tpm", False, str(err), err.hint)]
    with ident:
        out.append(Check("tpm", True, f"answers at {tcti}"))
        try:
            out.append(Check("ek certificate", True, f"{len(ident.ek_certificate())} bytes"))
        except Fixable as err:
            out.append(Check("ek certificate", False, str(err), err.hint))
        keys = ident.has_keys()
        for what, present in keys.items():
            out.append(
                Check(
                    what.replace("_", " "),
                    present,
                    "present" if present else "missing",
                    "run `factoryops provision init`",
                )
            )
        clock = _clock(ident)
        out.append(clock)
    enrollment = read_enrollment(state_dir)
    if enrollment is None:
        out.append(Check("enrollment", False, f"none in {state_dir}", "run `provision enroll`"))
    else:
        cert = enrollment.certificate()
        now = dt.datetime.now(dt.UTC)
        valid = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        out.append(
            Check(
                "certificate",
                valid,
                f"{enrollment.utid}, valid until {cert.not_valid_after_utc:%Y-%m-%d}",
                "re-enroll with a new token",
            )
        )
    url = hub_url or (enrollment.hub_url if enrollment else None)
    if url:
        out.append(_hub_check(url, enrollment.utid if enrollment else None))
    return out


def _clock(ident: TpmIdentity) -> Check:
    try:
        c = ident.clock()
    except Fixable as err:
        return Check("tpm clock", False, str(err), err.hint)
    if not c.safe:
        return Check("tpm clock", False, "clock not safe", "let the TPM run; check power loss")
    return Check(
        "tpm clock", True, f"{c.clock} ms, resets {c.reset_count}, restarts {c.restart_count}"
    )


def _hub_check(url: str, utid: str | None) -> Check:
    try:
        r = httpx.get(f"{url.rstrip('/')}/healthz", timeout=5)
        r.raise_for_status()
        if utid is None:
            return Check("hub", True, f"{url} answers")
        d = httpx.get(f"{url.rstrip('/')}/v1/devices/{utid}", timeout=5)
    except httpx.HTTPError as err:
        return Check("hub", False, f"{url}: {err}", "check the URL, DNS, firewall and the hub")
    if d.status_code == 404:
        return Check("hub", False, "the hub does not know this device", "run `provision enroll`")
    if d.json().get("revoked"):
        return Check("hub", False, "the hub revoked this device", "ask the hub admin")
    return Check("hub", True, f"{url} knows this device")


def _report(checks: list[Check], echo: Callable[[str], None]) -> bool:
    for c in checks:
        echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<16} {c.detail}")
        if not c.ok and c.fix:
            echo(f"     fix: {c.fix}")
    return all(c.ok for c in checks)


@provision.command()
@_TCTI
@_STATE
def status(tcti: str, state_dir: Path) -> None:
    """Show keys, enrollment and certificate (offline; exit 1 if not enrolled)."""
    if not _report([c for c in _checks(tcti, state_dir, None) if c.name != "hub"], click.echo):
        raise SystemExit(1)


@provision.command()
@_TCTI
@_STATE
@click.option("--hub", "hub_url", default=None, help="Hub to check (default: the enrolled one).")
def diagnose(tcti: str, state_dir: Path, hub_url: str | None) -> None:
    """Check TPM, keys, clock, certificate and hub; print a fix for each failure.

    \b
    Example:
      factoryops provision diagnose --hub https://hub.example
    """
    if not _report(_checks(tcti, state_dir, hub_url), click.echo):
        raise SystemExit(1)


@provision.command()
@click.option("--port", required=True, help="The node's serial device, e.g. /dev/ttyUSB0.")
@click.option("--id", "node_id", required=True, help="The node's id ([A-Za-z0-9_-], 1-32).")
@click.option("--broker", required=True, help="mqtt://host[:port] as the node reaches it.")
@click.option(
    "--agent-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The agent's config: its node-v1 [[mqtt]] section gives nodes_dir and the topic.",
)
@click.option(
    "--nodes-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the agent keeps node keys (instead of --agent-config).",
)
@click.option("--topic", help="Topic the node publishes to (default: from the agent config).")
@click.option("--period-ms", type=int, default=1000, show_default=True, help="Sampling period.")
@click.option(
    "--sensors",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="JSON list of sensor specs (docs/firmware.md); default: none (heartbeat only).",
)
@click.option("--replace", is_flag=True, help="Give an already registered node a new key.")
@click.option("--device-dir", default="", help="Folder on the node (default: its flash root).")
@click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True,
              help="Seconds to wait for each answer of the node.")  # fmt: skip
def node(
    port: str,
    node_id: str,
    broker: str,
    agent_config: Path | None,
    nodes_dir: Path | None,
    topic: str | None,
    period_ms: int,
    sensors: Path | None,
    replace: bool,
    device_dir: str,
    timeout_s: float,
) -> None:
    """Write a sensor node's key and config over its raw REPL and register it with the agent.

    \b
    Example:
      factoryops provision node --port /dev/ttyUSB0 --id press-3 \\
          --broker mqtt://10.0.0.5:1883 --agent-config /etc/factoryops/agent.toml
    """
    from provisioning.node import (  # noqa: PLC0415 - pyserial only for this command
        NodeSpec,
        find_nodes_dir,
        provision_node,
    )

    topic_filter = "factoryops/nodes/+"
    if agent_config is not None:
        nodes_dir, topic_filter = find_nodes_dir(agent_config)
    if nodes_dir is None:
        raise ProvisioningError(
            "where should the agent's copy of the key go?",
            hint="give --agent-config AGENT.toml (or --nodes-dir DIR)",
        )
    if topic is None:
        if not topic_filter.endswith("/+"):
            raise ProvisioningError(
                f"the agent's topic filter {topic_filter!r} does not end in /+",
                hint="give --topic explicitly",
            )
        topic = topic_filter[:-1] + node_id
    try:
        sensor_list = json.loads(sensors.read_text()) if sensors is not None else []
    except ValueError as err:
        raise ProvisioningError(
            f"{sensors}: not JSON ({err})", hint="a list of sensor tables"
        ) from err
    if not isinstance(sensor_list, list) or not all(isinstance(s, dict) for s in sensor_list):
        raise ProvisioningError(f"{sensors}: expected a JSON list of objects", hint="see docs")
    spec = NodeSpec(node_id, broker, topic, period_ms, tuple(sensor_list))
    _step(f"writing key and config to the node on {port}")
    done = provision_node(
        port, spec, nodes_dir, replace=replace, device_dir=device_dir, timeout_s=timeout_s
    )
    _step(f"node stored the key (SHA-256 {done.fingerprint[:16]}...)")
    _step(f"registered with the agent: {done.key_file} (mode 0600)")
    click.echo(f"node {node_id} provisioned; it publishes to {topic}. Reset it to start.")
