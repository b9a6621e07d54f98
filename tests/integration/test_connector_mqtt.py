"""The MQTT connector against real Mosquitto brokers on loopback: QoS 1 delivery, malformed
payloads counted while good ones flow, a persistent session that keeps messages while the
agent is away, and a broker restart survived without operator action.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config import parse_config
from agent.connectors.base import Sample, SourceGap
from agent.connectors.mqtt import MqttConfig, MqttConnector
from tests.brokers import Mosquitto, mosquitto_available
from tests.conftest import missing
from tests.connectorkit import running
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)


def _config(port: int, topic: str, client_id: str) -> MqttConfig:
    text = f"""
[device]
name = "gw"
[[mqtt]]
name = "line"
url = "mqtt://127.0.0.1:{port}"
client_id = "{client_id}"
[[mqtt.signals]]
name = "pressure"
topic = "{topic}"
pointer = "/p"
unit = "bar"
"""
    (cfg,) = parse_config(text, "a.toml").connectors["mqtt"]
    assert isinstance(cfg, MqttConfig)
    return cfg


async def _publish(port: int, topic: str, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as pub:
        for p in payloads:
            await pub.publish(topic, p, qos=1)


async def test_good_messages_arrive_and_bad_ones_are_counted(mqtt_port: int) -> None:
    topic = f"factoryops-test/{id(object()):x}/telemetry"
    async with _connected(_config(mqtt_port, topic, f"t-{id(object()):x}")) as (conn, got):
        await _publish(
            mqtt_port,
            topic,
            *[json.dumps({"p": i}).encode() for i in range(50)],
            b"{broken",
            b'{"p": "high"}',
            *[json.dumps({"p": i}).encode() for i in range(50, 100)],
        )
        await until(lambda: len(got) == 100 and sum(conn.errors.values()) == 2)
    assert [s.value for s in got] == [float(i) for i in range(100)]  # QoS 1, in order
    assert conn.errors == {"<payload>": 1, "pressure": 1}


def _connected(cfg: MqttConfig) -> Any:
    return running(MqttConnector(cfg), lambda c: c.reconnector.sessions >= 1)


@pytest.fixture
def broker(tmp_path: Path) -> Mosquitto:
    if not mosquitto_available():
        missing("mosquitto is not installed (apt install mosquitto)")
    return Mosquitto(tmp_path / "broker").start()


async def test_a_broker_restart_is_survived_and_the_session_kept(broker: Mosquitto) -> None:
    cfg = _config(broker.port, "line/telemetry", "gw-line-persistent")
    try:
        async with _connected(cfg) as (conn, got):
            await _publish(broker.port, "line/telemetry", b'{"p": 1}')
            await until(lambda: len(got) == 1)
            broker.stop(hard=True)  # kill -9 of the broker under the connector
            await until(lambda: conn.reconnector.drops >= 1)
            broker.start()  # same port, same persistence directory
            await until(lambda: conn.reconnector.sessions >= 2)
            await _publish(broker.port, "line/telemetry", b'{"p": 2}')
            await until(lambda: [s.value for s in got] == [1.0, 2.0])
        # the agent is away: its persistent session keeps QoS 1 messages for it
        await _publish(broker.port, "line/telemetry", b'{"p": 3}', b'{"p": 4}')
        async with _connected(cfg) as (_, got_later):
            await until(lambda: [s.value for s in got_later] == [3.0, 4.0])
    finally:
        broker.stop()


async def test_what_a_stalled_agent_received_but_did_not_take_is_delivered_again(
    mqtt_port: int,
) -> None:
    topic = f"factoryops-test/{id(object()):x}/stall"
    cfg = _config(mqtt_port, topic, f"stall-{id(object()):x}")
    stalled = MqttConnector(cfg)
    taken: list[float] = []

    async def emit_that_stalls(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        taken.extend(s.value for s in samples)
        if samples[-1].value == 9.0:  # the runtime's queue is full from here on
            await asyncio.Event().wait()

    task = asyncio.create_task(stalled.run(emit_that_stalls))
    try:
        await until(lambda: stalled.reconnector.sessions >= 1)
        await _publish(mqtt_port, topic, *[json.dumps({"p": i}).encode() for i in range(50)])
        await until(lambda: taken[-1:] == [9.0])
    finally:
        task.cancel()  # the agent stops while its emit is stuck
        await asyncio.gather(task, return_exceptions=True)
    async with _connected(cfg) as (_, got):
        await until(lambda: got[-1:] and got[-1].value == 49.0)
    values = [s.value for s in got]
    # 0..8 were acknowledged; 9 was taken but not acknowledged, so it may come once more
    assert values == [float(i) for i in range(int(values[0]), 50)]
    assert values[0] <= 9.0


async def test_a_message_is_acknowledged_only_once_its_readings_are_journaled(
    mqtt_port: int,
) -> None:
    """The agent is killed while the journal holds only the first readings: every message
    after them comes again, though the connector had taken them (the old ack-after-emit
    acknowledged all it took, and a kill lost them)."""
    topic = f"factoryops-test/{id(object()):x}/journal"
    cfg = _config(mqtt_port, topic, f"journal-{id(object()):x}")
    conn = MqttConnector(cfg)
    taken: list[float] = []

    async def emit(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        taken.extend(s.value for s in samples)

    async def journaled() -> None:  # the runtime's journal stops after five readings
        if len(taken) > 5:
            await asyncio.Event().wait()

    conn.bind_journaled(journaled)
    task = asyncio.create_task(conn.run(emit))
    try:
        await until(lambda: conn.reconnector.sessions >= 1)
        await _publish(mqtt_port, topic, *[json.dumps({"p": i}).encode() for i in range(50)])
        await until(lambda: len(taken) >= 12, what="taken beyond what is journaled")
    finally:
        task.cancel()  # kill: nothing after the first five is durable
        await asyncio.gather(task, return_exceptions=True)
    async with _connected(cfg) as (_, got):
        await until(lambda: got[-1:] and got[-1].value == 49.0)
    values = [s.value for s in got]
    assert values[0] <= 5.0, f"acknowledged before durable: redelivery starts at {values[0]}"
    assert values == [float(i) for i in range(int(values[0]), 50)]
