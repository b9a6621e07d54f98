"""The MQTT connector against real Mosquitto brokers on loopback: QoS 1 delivery, malformed
payloads counted while good ones flow, a persistent session that keeps messages while the
agent is away, and a broker restart survived without operator action.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config import parse_config
from agent.connectors.mqtt import MqttConfig, MqttConnector
from tests.brokers import Mosquitto, mosquitto_available
from tests.conftest import missing
from tests.connectorkit import running, until

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
