"""Publishes the SIMULATED plant to an MQTT broker (aiomqtt): one JSON object per feed sample.

Topic ``<prefix>/telemetry`` (prefix from the URL path, default ``factoryops/sim/pump``),
QoS 1. The publisher outlives a broker restart: it reconnects and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiomqtt

from hil_tests.errors import HilError
from hil_tests.feed import PlantFeed, PlantSample
from hil_tests.plant import SIGNALS
from hil_tests.tasks import stop_all

__all__ = ["DEFAULT_TOPIC_PREFIX", "MqttFace", "MqttTarget", "parse_mqtt_url", "payload"]

log = logging.getLogger(__name__)
DEFAULT_TOPIC_PREFIX = "factoryops/sim/pump"


def _close_now(client: aiomqtt.Client) -> None:
    """Close ``client``'s socket now, while the event loop runs: aiomqtt 2.5 leaves the socket
    of a connect that failed or was cancelled to paho's ``__del__``, which then calls back
    into a loop that may be closed (empicano/aiomqtt#377). paho's ``reinitialise()`` is its
    public way, and it clears aiomqtt's callbacks (agent/connectors/mqtt.py does the same)."""
    client._client.reinitialise()


async def _enter(client: aiomqtt.Client) -> None:
    """Connect ``client`` (its ``__aenter__``); a connect that fails or is cancelled has its
    socket closed at once, then raises as it did."""
    try:
        await client.__aenter__()
    except BaseException:
        _close_now(client)
        raise


@dataclass(frozen=True, slots=True)
class MqttTarget:
    host: str
    port: int
    topic: str  # where samples go


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://host[:port][/topic/prefix]`` -> where to publish; the port defaults to 1883."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise HilError(
            f"MQTT URL {url!r} is not mqtt://host[:port][/topic/prefix]",
            hint="for the local Mosquitto: --mqtt mqtt://127.0.0.1:1883",
        )
    try:
        port = parts.port or 1883
    except ValueError as err:
        raise HilError(f"MQTT URL {url!r} has a bad port") from err
    prefix = parts.path.strip("/") or DEFAULT_TOPIC_PREFIX
    return MqttTarget(parts.hostname, port, f"{prefix}/telemetry")


def payload(sample: PlantSample, ts_ns: int) -> bytes:
    """The JSON a subscriber gets: step, plant time, wall time (ns), values and units."""
    doc = {
        "step": sample.step,
        "plant_t_s": round(sample.t_s, 6),
        "ts_ns": ts_ns,
        "values": dict(sample.values),
        "units": dict(SIGNALS),
        "simulated": True,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class MqttFace:
    """``async with MqttFace(feed, "mqtt://127.0.0.1:1883") as pub:`` publishes every sample."""

    feed: PlantFeed
    url: str
    timeout_s: float = 5.0  # connect and each QoS 1 publish
    reconnect_s: float = 1.0  # pause between reconnect attempts after the broker drops
    published: int = 0
    target: MqttTarget = field(init=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.target = parse_mqtt_url(self.url)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.target.host,
            self.target.port,
            identifier=f"factoryops-sim-{self.target.port}-{id(self):x}",
            timeout=self.timeout_s,
        )

    async def __aenter__(self) -> MqttFace:
        if self._task is not None:
            raise HilError("the MQTT publisher is already running")
        client = self._client()
        try:
            await _enter(client)
        except aiomqtt.MqttError as err:
            raise HilError(
                f"cannot connect to the MQTT broker at "
                f"{self.target.host}:{self.target.port}: {err}",
                hint="start Mosquitto (systemctl start mosquitto) or fix --mqtt",
            ) from err
        self._task = asyncio.create_task(self._run(client), name="mqtt-face")
        log.info("publishing the plant to mqtt://%s:%d/%s", *self._where())
        return self

    def describe(self) -> str:
        return f"MQTT        {self.url}  topic {self.target.topic} (JSON, QoS 1)"

    def _where(self) -> tuple[str, int, str]:
        return self.target.host, self.target.port, self.target.topic

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            await stop_all([self._task])
            self._task = None

    async def _run(self, client: aiomqtt.Client) -> None:
        """Publish until cancelled; on a lost broker, reconnect and resume with fresh samples."""
        while True:
            try:
                first = self.feed.sample
                await self._publish(client, first)
                async for sample in self.feed.updates(after=first.step):
                    await self._publish(client, sample)
            except aiomqtt.MqttError as err:
                log.warning(
                    "MQTT broker lost (%s); reconnecting every %.1f s", err, self.reconnect_s
                )
            finally:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)
                _close_now(client)
            client = await self._reconnect()

    async def _reconnect(self) -> aiomqtt.Client:
        while True:
            await asyncio.sleep(self.reconnect_s)
            client = self._client()
            try:
                await _enter(client)
            except aiomqtt.MqttError as err:
                log.info("MQTT broker still unreachable: %s", err)
                continue
            log.info("MQTT broker back; publishing again")
            return client

    async def _publish(self, client: aiomqtt.Client, sample: PlantSample) -> None:
        await client.publish(
            self.target.topic, payload(sample, time.time_ns()), qos=1, timeout=self.timeout_s
        )
        self.published += 1
