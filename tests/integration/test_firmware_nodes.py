"""Real firmware nodes (firmware/ in MicroPython unix-port processes) publishing to a real
Mosquitto, and the agent's MQTT connector verifying every tag: readings arrive in node order,
forged, truncated and replayed messages from a Python publisher are refused and counted, a
power loss never reuses a (boot, seq), an outage drains from the node's ring oldest-first, a
silent node becomes a source gap, and a hung sensor driver is reset by the watchdog.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config import parse_config
from agent.connectors.base import Sample, SourceGap
from agent.connectors.mqtt import MqttConfig, MqttConnector
from agent.connectors.nodeauth import node_tag
from hil_tests.nodes import SimNode
from tests.brokers import Mosquitto, mosquitto_available
from tests.conftest import missing
from tests.connectorkit import running
from tests.firmware_run import micropython_or_skip
from tests.ptys import socat_available
from tests.waiting import until

pytestmark = [pytest.mark.timeout(120), pytest.mark.services]


def _config(port: int, prefix: str, nodes_dir: Path, silence_s: int = 30) -> MqttConfig:
    text = f"""
[device]
name = "gw"
[[mqtt]]
name = "nodes"
url = "mqtt://127.0.0.1:{port}"
client_id = "gw-{prefix.replace("/", "-")}"
payload = "node-v1"
topic = "{prefix}/+"
nodes_dir = "{nodes_dir}"
silence_s = {silence_s}
"""
    (cfg,) = parse_config(text, str(nodes_dir.parent / "agent.toml")).connectors["mqtt"]
    assert isinstance(cfg, MqttConfig)
    return cfg


@contextmanager
def _fleet(tmp_path: Path, port: int, ids: list[str], **extra: Any) -> Iterator[list[SimNode]]:
    """Nodes provisioned and started; their keys registered in tmp_path/nodes."""
    micropython_or_skip()
    prefix = f"fo-fw-test/{uuid.uuid4().hex[:10]}"
    nodes_dir = tmp_path / "nodes"
    nodes_dir.mkdir(exist_ok=True)
    nodes = []
    for node_id in ids:
        key = os.urandom(32)
        registered = nodes_dir / f"{node_id}.key"
        registered.write_bytes(key)
        registered.chmod(0o600)
        node = SimNode(tmp_path / node_id, node_id, key, f"{prefix}/{node_id}", port, extra=extra)
        nodes.append(node.provision())
    try:
        yield nodes
    finally:
        for n in nodes:
            n.kill()


def _prefix(nodes: list[SimNode]) -> str:
    return nodes[0].topic.rsplit("/", 1)[0]


def _pairs(got: list[Sample], node: str) -> list[tuple[int, int]]:
    boots = [int(s.value) for s in got if s.signal == f"{node}:boot"]
    seqs = [int(s.value) for s in got if s.signal == f"{node}:seq"]
    return list(zip(boots, seqs, strict=True))


def _connected(cfg: MqttConfig) -> Any:
    return running(MqttConnector(cfg), lambda c: c.reconnector.sessions >= 1)


async def test_nodes_publish_tagged_readings_that_the_agent_verifies_in_order(
    tmp_path: Path, mqtt_port: int
) -> None:
    with _fleet(tmp_path, mqtt_port, ["n1", "n2"]) as nodes:
        cfg = _config(mqtt_port, _prefix(nodes), tmp_path / "nodes")
        async with _connected(cfg) as (conn, got):
            for n in nodes:
                n.start()
            await until(lambda: all(len(_pairs(got, n)) >= 10 for n in ("n1", "n2")))
    for node in ("n1", "n2"):
        pairs = _pairs(got, node)
        assert pairs == [(1, s) for s in range(pairs[0][1], pairs[0][1] + len(pairs))]
        assert {s.signal for s in got if s.signal.startswith(f"{node}.")} == {
            f"{node}.temp",
            f"{node}.pressure",
            f"{node}.flow",
        }
    temps = [s.value for s in got if s.signal == "n1.temp"]
    assert all(19.0 < v < 23.0 for v in temps)  # the I2C path decoded the simulated sensor
    assert conn.node_gate is not None
    assert conn.node_gate.refused == {}


async def test_forged_truncated_and_replayed_messages_are_refused_while_the_node_flows(
    tmp_path: Path, mqtt_port: int
) -> None:
    with _fleet(tmp_path, mqtt_port, ["n1"]) as (node,):
        cfg = _config(mqtt_port, _prefix([node]), tmp_path / "nodes")
        captured: list[bytes] = []
        async with aiomqtt.Client("127.0.0.1", mqtt_port) as attacker:
            await attacker.subscribe(node.topic, qos=1)
            async with _connected(cfg) as (conn, got):
                node.start()
                async for message in attacker.messages:  # a genuine message, seen on the wire
                    assert isinstance(message.payload, bytes)
                    captured.append(message.payload)
                    break
                await until(lambda: len(_pairs(got, "n1")) >= 5)
                body = json.dumps({"v": 1, "node": "n1", "boot": 99, "seq": 1, "ts": 0, "r": []})
                tag = node_tag(os.urandom(32), body.encode())  # not the node's key
                forged = body.encode() + b"\n" + tag.hex().encode()
                for payload in (forged, captured[0], captured[0][:-7], b"{}\n" + b"0" * 64):
                    await attacker.publish(node.topic, payload, qos=1)
                gate = conn.node_gate
                assert gate is not None
                await until(lambda: sum(gate.refused.values()) == 4)
                seen = len(_pairs(got, "n1"))
                await until(lambda: len(_pairs(got, "n1")) >= seen + 5)  # the node goes on
    assert gate.refused == {
        ("n1", "bad_tag"): 1,
        ("n1", "replay"): 1,
        ("<unknown>", "truncated"): 1,
        ("<unknown>", "malformed"): 1,
    }
    assert all(b != 99 for b, _ in _pairs(got, "n1"))


async def test_a_reading_not_yet_durable_when_the_agent_crashes_is_admitted_when_it_comes_again(
    tmp_path: Path, mqtt_port: int
) -> None:
    """The agent stops on an error elsewhere (a cancel, as a crash's task group gives) while
    its journal holds only the first readings. The messages after them were never
    acknowledged and come again; the replay state saved at the stop must not hold their
    pairs, or each comes back refused as its own replay and is lost (a gateway_faults run:
    the agent stopped on a TPM error, the node's seq 115 was refused and missing)."""
    nodes_dir = tmp_path / "nodes"
    nodes_dir.mkdir()
    key = os.urandom(32)
    (nodes_dir / "n1.key").write_bytes(key)
    (nodes_dir / "n1.key").chmod(0o600)
    prefix = f"fo-fw-test/{uuid.uuid4().hex[:10]}"
    cfg = _config(mqtt_port, prefix, nodes_dir)
    bodies = [
        json.dumps({"v": 1, "node": "n1", "boot": 1, "seq": i, "ts": 0, "r": [["t", i, "C"]]})
        for i in range(1, 21)
    ]
    messages = [b.encode() + b"\n" + node_tag(key, b.encode()).hex().encode() for b in bodies]
    first = MqttConnector(cfg)
    taken: list[tuple[int, int]] = []

    async def emit(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        taken.extend(_pairs(samples, "n1"))

    async def journaled() -> None:  # the journal stops after five readings
        if len(taken) > 5:
            await asyncio.Event().wait()

    first.bind_journaled(journaled)
    task = asyncio.create_task(first.run(emit))
    try:
        await until(lambda: first.reconnector.sessions >= 1)
        async with aiomqtt.Client("127.0.0.1", mqtt_port) as node:
            for m in messages:
                await node.publish(f"{prefix}/n1", m, qos=1)
        await until(lambda: len(taken) >= 12, what="taken beyond what is journaled")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with _connected(cfg) as (conn, got):
        await until(lambda: _pairs(got, "n1")[-1:] == [(1, 20)], what="seq 20 again")
    again = _pairs(got, "n1")
    assert conn.node_gate is not None
    assert conn.node_gate.refused == {}
    assert again == [(1, s) for s in range(again[0][1], 21)]
    assert again[0][1] <= 6, f"acknowledged before durable: redelivery starts at {again[0]}"


async def test_a_node_rebooted_over_its_serial_repl_boots_again_and_loses_nothing(
    tmp_path: Path, mqtt_port: int
) -> None:
    """The firmware runs from MicroPython's REPL on a serial line (a socat pty pair), as on a
    device; Ctrl-C and the raw REPL (Ctrl-A) reboot it: a new boot number, the seqs of each
    boot without a hole, nothing refused."""
    if not socat_available():
        missing("socat is not installed (apt install socat)")
    with _fleet(tmp_path, mqtt_port, ["n1"]) as (node,):
        node.repl = True
        cfg = _config(mqtt_port, _prefix([node]), tmp_path / "nodes")
        async with _connected(cfg) as (conn, got):
            node.start()
            await until(lambda: len(_pairs(got, "n1")) >= 5, what="boot 1 publishing")
            node.reboot_over_repl()
            await until(
                lambda: len([p for p in _pairs(got, "n1") if p[0] == 2]) >= 5,
                what="boot 2 publishing",
            )
    pairs = _pairs(got, "n1")
    for boot in (1, 2):
        seqs = [s for b, s in pairs if b == boot]
        assert seqs == list(range(1, len(seqs) + 1)), f"boot {boot} lost or repeated a seq"
    assert node.boot_count() == 2
    assert conn.node_gate is not None
    assert conn.node_gate.refused == {}


async def test_a_power_loss_never_reuses_a_boot_seq_pair(tmp_path: Path, mqtt_port: int) -> None:
    with _fleet(tmp_path, mqtt_port, ["n1"]) as (node,):
        cfg = _config(mqtt_port, _prefix([node]), tmp_path / "nodes")
        async with _connected(cfg) as (conn, got):
            node.start()
            await until(lambda: len(_pairs(got, "n1")) >= 5)
            node.kill()  # kill -9: the node's power is cut
            node.start()
            await until(lambda: any(b == 2 for b, _ in _pairs(got, "n1")))
            await until(lambda: len([p for p in _pairs(got, "n1") if p[0] == 2]) >= 5)
    pairs = _pairs(got, "n1")
    assert len(set(pairs)) == len(pairs)
    assert pairs == sorted(pairs)
    assert node.boot_count() == 2
    assert conn.node_gate is not None
    assert conn.node_gate.refused == {}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not mosquitto_available():
        missing("mosquitto is not installed (apt install mosquitto)")
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


async def test_an_outage_is_kept_in_the_node_ring_and_drained_oldest_first(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with _fleet(tmp_path, broker.port, ["n1"]) as (node,):
        cfg = _config(broker.port, _prefix([node]), tmp_path / "nodes")
        async with _connected(cfg) as (conn, got):
            node.start()
            await until(lambda: len(_pairs(got, "n1")) >= 3)
            # SIGTERM: Mosquitto saves what it acknowledged. A kill -9 of the broker loses up to
            # its autosave interval of acknowledged messages; the gate counts those as missing
            broker.stop()
            await until(lambda: node.ring_count() >= 15)  # the node samples on, into flash
            node.kill()  # and loses power during the outage: the ring is on flash
            node.start()
            await until(lambda: node.ring_count() >= 20)
            broker.start()
            await until(lambda: node.ring_count() == 0 and len(_pairs(got, "n1")) >= 25)
            gate = conn.node_gate
            assert gate is not None
            await until(lambda: gate.last.get("n1", (0, 0)) >= (2, 8))
    pairs = _pairs(got, "n1")
    assert pairs == sorted(pairs), pairs  # oldest first, across the reboot
    boot1 = [s for b, s in pairs if b == 1]
    boot2 = [s for b, s in pairs if b == 2]
    assert boot1 == list(range(1, len(boot1) + 1)), pairs  # nothing lost, though power was cut
    assert boot2 == list(range(1, len(boot2) + 1)), pairs
    assert gate.missing == {}


async def test_a_silent_node_becomes_a_source_gap_and_closes_when_it_returns(
    tmp_path: Path, mqtt_port: int
) -> None:
    with _fleet(tmp_path, mqtt_port, ["n1"]) as (node,):
        cfg = _config(mqtt_port, _prefix([node]), tmp_path / "nodes", silence_s=1)
        async with _connected(cfg) as (conn, got):
            node.start()
            await until(lambda: len(_pairs(got, "n1")) >= 3)
            node.kill()
            await until(lambda: any(g.source == "n1" for g in conn.node_gaps))
            stopped_at = got[-1].ts_ns
            node.start()
            await until(lambda: any(b == 2 for b, _ in _pairs(got, "n1")))
    gaps = [g for g in conn.node_gaps if g.source == "n1"]
    assert all(g.reason == "timeout" for g in gaps)
    assert gaps[0].first_ts_ns >= stopped_at - 10**9
    for a, b in itertools.pairwise(gaps):
        assert a.last_ts_ns <= b.first_ts_ns  # contiguous pieces, never overlapping


async def test_a_hung_sensor_driver_is_reset_by_the_watchdog(
    tmp_path: Path, mqtt_port: int
) -> None:
    with _fleet(tmp_path, mqtt_port, ["n1"], watchdog_ms=800) as (node,):
        node.set_fault("temp", "hang")
        node.start()
        await until(lambda: not node.running)
        assert "watchdog: not fed for 800 ms" in node.log_text()
        node.set_fault("temp", None)
        node.start()
        await until(lambda: "boot 2" in node.log_text())


async def test_a_failed_sensor_is_a_refused_source_gap_while_the_others_flow(
    tmp_path: Path, mqtt_port: int
) -> None:
    with _fleet(tmp_path, mqtt_port, ["n1"]) as (node,):
        cfg = _config(mqtt_port, _prefix([node]), tmp_path / "nodes")
        async with _connected(cfg) as (conn, got):
            node.set_fault("flow", "error")  # the UART transmitter stops answering
            node.start()
            await until(lambda: len(_pairs(got, "n1")) >= 5)
    assert {g.source: g.reason for g in conn.node_gaps} == {"n1.flow": "refused"}
    signals = {s.signal for s in got}
    assert "n1.flow" not in signals and {"n1.temp", "n1.pressure"} <= signals
