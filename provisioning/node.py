"""``factoryops provision node``: give a sensor node its key and configuration over the raw
REPL, check the node stored the key, then register the key with the agent.

Order matters: a fresh key is written to the node first and read back as a SHA-256
fingerprint (the key itself never comes back over the wire or into a log); only then is it
written to the agent's ``nodes_dir`` as ``<id>.key`` (mode 0600). A failure before that leaves
the agent as it was. The node's boot counter is never reset, so a node provisioned again can
never repeat a (boot, seq) the agent has already seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.durable import write_atomically
from provisioning.errors import ProvisioningError
from provisioning.rawrepl import RawRepl

__all__ = ["NodeProvisioned", "NodeSpec", "find_nodes_dir", "node_config", "provision_node"]

KEY_BYTES = 32  # the agent's node keys (agent/connectors/nodeauth.py KEY_BYTES)
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")  # the agent's node ids (nodeauth.valid_node_id)
_BROKER = re.compile(r"mqtt://([^:/\s]+)(?::(\d{1,5}))?/?\Z")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What the node is told: who it is, where its broker is, what it measures."""

    node_id: str
    broker: str  # mqtt://host[:port]
    topic: str
    period_ms: int = 1000
    sensors: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NODE_ID.match(self.node_id):
            raise ProvisioningError(
                f"node id {self.node_id!r} is not [A-Za-z0-9_-], 1 to 32 characters",
                hint="pick an id such as press-3-temp",
            )
        if not _BROKER.match(self.broker):
            raise ProvisioningError(
                f"broker {self.broker!r} is not mqtt://host[:port]",
                hint="give the address the node reaches the broker at: mqtt://10.0.0.5:1883",
            )
        if not 10 <= self.period_ms <= 3_600_000:
            raise ProvisioningError(
                f"period {self.period_ms} ms is outside 10..3600000", hint="use --period-ms 1000"
            )


@dataclass(frozen=True, slots=True)
class NodeProvisioned:
    node_id: str
    key_file: Path
    fingerprint: str  # SHA-256 of the key, hex: safe to print and compare


def node_config(spec: NodeSpec) -> dict[str, Any]:
    """The node.json the firmware reads (firmware/store.py)."""
    m = _BROKER.match(spec.broker)
    assert m is not None  # checked in NodeSpec
    return {
        "id": spec.node_id,
        "broker": m.group(1),
        "port": int(m.group(2) or 1883),
        "topic": spec.topic,
        "period_ms": spec.period_ms,
        "sensors": list(spec.sensors),
    } | spec.extra


def find_nodes_dir(agent_config: Path) -> tuple[Path, str]:
    """The ``nodes_dir`` and topic filter of the agent config's node-v1 MQTT section."""
    try:
        doc = tomllib.loads(agent_config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ProvisioningError(
            f"cannot read the agent config {agent_config}: {err}",
            hint="give the agent's config file (factoryops agent check-config FILE checks it)",
        ) from err
    for i, section in enumerate(doc.get("mqtt", [])):
        if isinstance(section, dict) and section.get("payload") == "node-v1":
            nodes_dir = section.get("nodes_dir")
            topic = section.get("topic")
            if not isinstance(nodes_dir, str) or not isinstance(topic, str):
                raise ProvisioningError(
                    f"{agent_config}: mqtt[{i}] lacks nodes_dir or topic",
                    hint="see docs/firmware.md for a node-v1 section",
                )
            return agent_config.resolve().parent / nodes_dir, topic
    raise ProvisioningError(
        f'{agent_config} has no [[mqtt]] section with payload = "node-v1"',
        hint="add one (docs/firmware.md), or give --nodes-dir",
    )


def _write_file_code(name: str, data: bytes, device_dir: str) -> str:
    # temp file + rename on the node too, so a reset mid-write leaves the old file
    path = f"{device_dir.rstrip('/')}/{name}" if device_dir else name
    return (
        "import binascii, os\n"
        f"f = open({path + '.tmp'!r}, 'wb')\n"
        f"f.write(binascii.unhexlify({data.hex()!r}))\n"
        "f.close()\n"
        f"os.rename({path + '.tmp'!r}, {path!r})\n"
    )


def _fingerprint_code(name: str, device_dir: str) -> str:
    path = f"{device_dir.rstrip('/')}/{name}" if device_dir else name
    return (
        "import hashlib, binascii\n"
        f"print(binascii.hexlify(hashlib.sha256(open({path!r}, 'rb').read()).digest()).decode())\n"
    )


def provision_node(
    port: str,
    spec: NodeSpec,
    nodes_dir: Path,
    *,
    replace: bool = False,
    device_dir: str = "",
    timeout_s: float = 5.0,
) -> NodeProvisioned:
    """Write a fresh key and ``spec`` to the node on ``port``, verify, register the key."""
    key_file = nodes_dir / f"{spec.node_id}.key"
    if key_file.exists() and not replace:
        raise ProvisioningError(
            f"node {spec.node_id} is already registered ({key_file})",
            hint="pick another --id, or add --replace to give this node a new key",
        )
    if not nodes_dir.is_dir():
        raise ProvisioningError(
            f"the agent's nodes folder {nodes_dir} does not exist",
            hint=f"mkdir -m 700 {nodes_dir}",
        )
    key = os.urandom(KEY_BYTES)
    fingerprint = hashlib.sha256(key).hexdigest()
    with RawRepl(port, timeout_s=timeout_s) as repl:
        repl.run(_write_file_code("node.key", key, device_dir))
        config = json.dumps(node_config(spec)).encode()
        repl.run(_write_file_code("node.json", config, device_dir))
        stored = repl.run(_fingerprint_code("node.key", device_dir)).strip()
    if stored != fingerprint:
        raise ProvisioningError(
            f"the node on {port} stored a different key (SHA-256 {stored[:16]}..., "
            f"expected {fingerprint[:16]}...)",
            hint="its flash may be failing: run the command again; if it repeats, replace it",
        )
    write_atomically(key_file, key, 0o600)
    return NodeProvisioned(spec.node_id, key_file, fingerprint)
