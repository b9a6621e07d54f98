"""The SIMULATED plant's OPC UA and MQTT faces, read by real peers on loopback.

An asyncua client reads the asyncua server; an aiomqtt subscriber reads what the publisher
sends through the local Mosquitto. The plant is a simulation; servers, broker and clients
are the real libraries.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest
from asyncua import Client

from hil_tests.feed import FeedLimits
from hil_tests.modbus_server import PlantServer
from hil_tests.mqtt_publisher import MqttFace
from hil_tests.opcua_server import OpcUaFace
from hil_tests.plant import SIGNALS
from tests.brokers import Mosquitto, mosquitto_available, sockets_to
from tests.conftest import missing
from tests.waiting import until

STILL = FeedLimits().max_period_s  # the test steps the plant with tick()
WAIT_S = 10.0  # upper bound on waiting for a face to publish a tick; never asserted on


async def test_an_opcua_client_reads_every_signal_as_the_plant_serves_it() -> None:
    async with PlantServer(period_s=STILL, opcua_port=0) as srv:
        (face,) = srv.faces
        assert isinstance(face, OpcUaFace)
        async with Client(face.url, timeout=WAIT_S) as client:
            for _ in range(2):
                nodes = [client.get_node(face.nodeids[name]) for name in SIGNALS]
                values = await client.read_values(nodes)
                assert dict(zip(SIGNALS, values, strict=True)) == srv.values
                step = srv.feed.tick().step
                async with asyncio.timeout(WAIT_S):
                    await face.wait_written(step)


@pytest.mark.services
async def test_an_mqtt_subscriber_gets_each_sample_as_json(mqtt_port: int) -> None:
    url = f"mqtt://127.0.0.1:{mqtt_port}/factoryops-test/sim-{id(object()):x}"
    async with PlantServer(period_s=STILL, mqtt_url=url) as srv:
        (face,) = srv.faces
        assert isinstance(face, MqttFace)
        async with aiomqtt.Client("127.0.0.1", mqtt_port, timeout=WAIT_S) as sub:
            await sub.subscribe(face.target.topic, qos=1)
            srv.feed.tick()
            want = srv.feed.sample
            async with asyncio.timeout(WAIT_S):
                async for message in sub.messages:
                    doc = json.loads(bytes(message.payload))  # type: ignore[arg-type]  # aiomqtt types payload as a union; the face publishes bytes
                    if doc["step"] == want.step:
                        break
        assert doc["values"] == dict(want.values)
        assert doc["units"] == dict(SIGNALS)
        assert doc["simulated"] is True


async def test_the_mqtt_face_publishes_again_after_its_broker_restarts(tmp_path: Path) -> None:
    """The face reconnects to a broker that went away and came back, and when it stops it
    leaves no socket to the broker open (each connection is closed while the loop runs, not
    left to paho's ``__del__``: empicano/aiomqtt#377)."""
    if not mosquitto_available():
        missing("mosquitto is not installed (apt install mosquitto)")
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        url = f"mqtt://127.0.0.1:{broker.port}/factoryops-test/restart"
        async with PlantServer(period_s=STILL, mqtt_url=url) as srv:
            (face,) = srv.faces
            assert isinstance(face, MqttFace)
            face.reconnect_s = 0.05
            await until(lambda: face.published >= 1, what="the first sample published")
            before = face.published
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            # the next sample meets the lost connection; the face reconnects and publishes
            srv.feed.tick()
            await until(lambda: face.published > before, what="a sample after the restart")
        assert sockets_to(broker.port) == []
    finally:
        broker.stop()
