"""A capsule into the files a site runs: agent TOML, the hub's job policy, the report template.

Pure: values in, text out. ``apply.py`` writes them; ``spec.py`` has already refused
anything these renderers could not express, and the agent's own parser checks the TOML.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capsules.errors import CapsuleError
from capsules.spec import Capsule, Connector, Signal

__all__ = [
    "HUB_JOB_TYPES",
    "M2N2_FAMILIES",
    "Endpoints",
    "job_policy",
    "render_agent_toml",
    "report_template",
]

_DEFAULT_ENDPOINT = {
    "modbus": "127.0.0.1:5020",
    "opcua": "opc.tcp://127.0.0.1:4840",
    "mqtt": "mqtt://127.0.0.1:1883",
}


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the site's devices and hub are: connector name -> host:port or URL."""

    hub_url: str | None = None
    device_name: str | None = None
    signer: str = "tpm"
    model_manifest: str | None = None
    connectors: Mapping[str, str] = field(default_factory=dict)
    # a SIMULATED plant running this many times faster than real time (demos only): polls
    # and windows shrink by the same factor so the agent samples the same plant time
    time_scale: float = 1.0

    def interval_ms(self, s: Signal) -> int:
        return max(10, round(s.interval_ms / self.time_scale))

    def of(self, conn: Connector) -> str:
        return self.connectors.get(conn.name, _DEFAULT_ENDPOINT[conn.protocol])


def _q(text: str) -> str:
    # a TOML basic string; json's escaping is a subset TOML accepts
    return json.dumps(text, ensure_ascii=False)


def _num(v: float) -> str:
    return repr(float(v))


def _modbus(conn: Connector, endpoint: str, where: Endpoints) -> list[str]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise CapsuleError(
            f"connector {conn.name}: endpoint {endpoint!r} is not host:port",
            hint="give Modbus endpoints as --endpoint NAME=10.0.0.7:502",
        )
    intervals = sorted({where.interval_ms(s) for s in conn.signals})
    fastest = intervals[0]
    lines = [
        "[[modbus]]",
        f"name = {_q(conn.name)}",
        f"host = {_q(host)}",
        f"port = {int(port)}",
        f"device_id = {conn.device_id}",
        f"poll_interval_ms = {fastest}",
        "timeout_ms = 1000",
    ]
    groups = {f"every_{ms}ms": ms for ms in intervals if ms != fastest}
    if groups:
        lines += ["", "[modbus.groups]", *(f"{k} = {v}" for k, v in groups.items())]
    for s in conn.signals:
        lines += [
            "",
            "[[modbus.tags]]",
            f"name = {_q(s.name)}",
            f"table = {_q(s.table)}",
            f"address = {s.address}",
            f"type = {_q(s.type)}",
            f"scale = {_num(s.scale)}",
            f"offset = {_num(s.offset)}",
            f"unit = {_q(s.unit)}",
        ]
        if where.interval_ms(s) != fastest:
            lines.append(f"group = {_q(f'every_{where.interval_ms(s)}ms')}")
    return lines


def _scaled(s: Signal) -> list[str]:
    return [f"unit = {_q(s.unit)}", f"scale = {_num(s.scale)}", f"offset = {_num(s.offset)}"]


def _opcua(conn: Connector, endpoint: str, where: Endpoints) -> list[str]:
    lines = [
        "[[opcua]]",
        f"name = {_q(conn.name)}",
        f"url = {_q(endpoint)}",
        'mode = "subscribe"',
        f"publishing_interval_ms = {min(60_000, *(where.interval_ms(s) for s in conn.signals))}",
    ]
    for s in conn.signals:
        lines += ["", "[[opcua.signals]]", f"name = {_q(s.name)}", f"node = {_q(s.node or '')}"]
        lines += _scaled(s)
    return lines


def _mqtt(conn: Connector, endpoint: str, where: Endpoints) -> list[str]:
    lines = ["[[mqtt]]", f"name = {_q(conn.name)}", f"url = {_q(endpoint)}", 'payload = "json"']
    for s in conn.signals:
        lines += ["", "[[mqtt.signals]]", f"name = {_q(s.name)}", f"topic = {_q(s.topic or '')}"]
        lines += [f"pointer = {_q(s.pointer)}", *_scaled(s)]
    return lines


_SECTIONS = {"modbus": _modbus, "opcua": _opcua, "mqtt": _mqtt}


def render_agent_toml(cap: Capsule, where: Endpoints) -> str:
    """The agent's configuration for this capsule (checked by ``agent.config.parse_config``)."""
    lines = [
        f"# FactoryOps agent configuration from capsule {cap.name} {cap.version}",
        f"# (area {cap.area}: {cap.area_name}; capsule.toml sha256 {cap.digest})",
        "",
        "[device]",
        f"name = {_q(where.device_name or f'{cap.name}-gateway')}",
        f"signer = {_q(where.signer)}",
        'key_file = "device.key"',
        "",
        "[hub]",
        *([f"url = {_q(where.hub_url)}"] if where.hub_url else ["# url = (offline: spool only)"]),
        f"batch_proofs = {cap.edge.upload_batch}",
        "",
        "[window]",
        f"max_readings = {cap.proof.window_readings}",
        f"max_ms = {max(100, round(cap.proof.window_ms / where.time_scale))}",
        "",
        "[spool]",
        'path = "spool.db"',
        f"disk_cap_bytes = {cap.edge.disk_cap_mib << 20}",
        "",
    ]
    if where.model_manifest:
        lines += ["[model]", f"manifest = {_q(where.model_manifest)}", ""]
    else:
        lines += [
            f"# [model]: build the {cap.model.family} recipe on this site's normal operation",
            "# (factoryops model build), then set manifest = the .int8.manifest.json it writes",
            "",
        ]
    for conn in cap.connectors:
        lines += [*_SECTIONS[conn.protocol](conn, where.of(conn), where), ""]
    return "\n".join(lines)


# capsule job kind -> the hub's job type (cloud_sync/jobs/fleet.py: fleet_job_types)
HUB_JOB_TYPES = {
    "m2n2_merge": "m2n2",
    "rnd1_threshold": "rnd1.tune",
    "rnd1_setpoint": "rnd1.setpoint",
}
# what the hub's m2n2 job merges today (M2N2Params.family); other families wait for it
M2N2_FAMILIES = ("autoencoder",)


def _job_note(cap: Capsule, kind: str) -> str | None:
    if kind == "m2n2_merge" and cap.model.family not in M2N2_FAMILIES:
        return (
            f"the hub's m2n2 job merges {', '.join(M2N2_FAMILIES)} models only; this "
            f"{cap.model.family} merge waits until it merges that family"
        )
    return None


def job_policy(cap: Capsule) -> dict[str, Any]:
    """The fleet jobs this capsule asks the hub to run, and on which cadence (JSON)."""
    m = cap.model
    return {
        "capsule": cap.name,
        "version": cap.version,
        "capsule_sha256": cap.digest,
        "update_channel": cap.edge.update_channel,
        "report_cadence": cap.proof.report_cadence,
        "model": {
            "family": m.family,
            "signals": list(m.signals),
            "lags": m.lags,
            "span": m.span,
            "limit": m.limit,
            **({"explained": m.explained} if m.family == "pca" else {}),
        },
        "jobs": [
            {
                "kind": j.kind,
                "hub_type": HUB_JOB_TYPES[j.kind],
                "note": _job_note(cap, j.kind),
                "cadence": j.cadence,
                "min_sites": j.min_sites,
                "trials": j.trials,
                "objective": j.objective,
            }
            for j in cap.jobs
        ],
    }


def report_template(cap: Capsule) -> dict[str, Any]:
    """The deliverable: sections, widget and the narrative's sentence templates (JSON)."""
    d = cap.deliverable
    return {
        "capsule": cap.name,
        "version": cap.version,
        "title": d.title,
        "sections": [{"id": s.id, "title": s.title, "source": s.source} for s in d.sections],
        "widget": {"kind": d.widget_kind, "signals": list(d.widget_signals)},
        "narrative": [{"fact": s.fact, "text": s.text} for s in d.narrative],
        "statistics": list(cap.proof.statistics),
        "drift_test": cap.proof.drift_test,
        "signals": [
            {
                "name": s.name,
                "unit": s.unit,
                "quantity": s.quantity,
                "range": list(s.range),
                "normal": list(s.normal),
            }
            for s in cap.signals
        ],
    }
