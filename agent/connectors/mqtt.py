"""MQTT connector (aiomqtt): JSON or Sparkplug-B-style JSON payloads mapped to signals.

```toml
[[mqtt]]
name = "line-1"
url = "mqtt://127.0.0.1:1883"
client_id = "gw-1-line-1"      # persistent session: the broker keeps QoS 1 messages for us
payload = "json"               # or "sparkplug-json": {"timestamp", "metrics": [{"name", "value"}]}
[[mqtt.signals]]
name = "pressure"
topic = "plant/line1/+/telemetry"   # an MQTT filter (+ and # allowed)
pointer = "/values/Pressure"        # RFC 6901 pointer (json), or the metric name (sparkplug)
unit = "bar"
```

Every message is decoded against every signal whose filter matches its topic. A payload
that is not JSON, too large, or lacks a mapped field is counted in ``errors`` (per signal,
or ``<payload>`` when nothing could be read), logged once truncated, and dropped; the
connection and every other message go on. The broker going away is survived with
jittered reconnects (``Reconnector``); subscriptions are made again on every session.

A QoS 1/2 message is acknowledged only once ``emit`` has returned, i.e. the runtime's bounded
queue took its readings (and also when it was malformed or matched no signal: it was
counted). Until then the broker holds it: at most its in-flight window (Mosquitto's
``max_inflight_messages``, 20) is on its way to us, so a stalled runtime stops the broker
instead of growing memory here, and a message received but not taken when the agent stops or
the connection drops is delivered again (at least once; the repeat has the same value).
Limit (documented in docs/agent.md): between ``emit`` and the spool commit the readings sit
in the runtime's queue; a crash then loses them, as for every connector.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from agent.config import CONNECTOR_PARSERS, Where, _choice, _get, _int, _no_unknown
from agent.connectors.base import Emit, Sample
from agent.connectors.common import (
    SCALING_KEYS,
    LinkConnector,
    MalformedPayload,
    Scaling,
    parse_list_section,
    parse_scaling,
    parse_signals,
    to_float,
    truncate,
)

__all__ = ["MqttConfig", "MqttConnector", "MqttSignal", "decode_message", "resolve_pointer"]

log = logging.getLogger(__name__)
PAYLOAD_KINDS = ("json", "sparkplug-json")


@dataclass(frozen=True, slots=True)
class MqttSignal:
    name: str
    topic: str
    pointer: str
    scaling: Scaling


@dataclass(frozen=True, slots=True)
class MqttConfig:
    name: str
    host: str
    port: int
    client_id: str
    qos: int
    payload: str
    max_payload_bytes: int
    signals: tuple[MqttSignal, ...]


def _signal(t: dict[str, Any], w: Where) -> MqttSignal:
    _no_unknown(t, w, {"name", "topic", "pointer", *SCALING_KEYS})
    topic = _get(t, w, "topic", str)
    if not topic or any(c in topic for c in "\0") or "#" in topic[:-1]:
        raise w.error("topic", f"{topic!r} is not an MQTT topic filter ('#' only at the end)")
    return MqttSignal(
        _get(t, w, "name", str), topic, _get(t, w, "pointer", str), parse_scaling(t, w)
    )


def _connector(t: dict[str, Any], w: Where) -> MqttConfig:
    url = _get(t, w, "url", str)
    try:  # urlsplit refuses a malformed [IPv6] host, .port a bad port: both ValueError
        parts = urlsplit(url)
        port = parts.port or 1883
    except ValueError as err:
        raise w.error("url", f"{url!r} is not mqtt://host[:port] ({err})") from err
    if parts.scheme != "mqtt" or not parts.hostname:
        raise w.error("url", f"{url!r} is not mqtt://host[:port]")
    name = _get(t, w, "name", str)
    payload = _choice(t, w, "payload", PAYLOAD_KINDS, "json")
    signals = parse_signals(t, w, _signal)
    if payload == "json":
        for i, s in enumerate(signals):
            if s.pointer and not s.pointer.startswith("/"):
                raise w.error(f"signals[{i}].pointer", "a JSON pointer starts with '/'")
    return MqttConfig(
        name=name,
        host=parts.hostname,
        port=port,
        client_id=_get(t, w, "client_id", str, f"factoryops-{name}"),
        qos=_int(t, w, "qos", 0, 2, 1),
        payload=payload,
        max_payload_bytes=_int(t, w, "max_payload_bytes", 64, 16 << 20, 64 << 10),
        signals=signals,
    )


def parse_mqtt_section(raw: Any, w: Where) -> tuple[MqttConfig, ...]:
    known = {"name", "url", "client_id", "qos", "payload", "max_payload_bytes", "signals"}
    return parse_list_section(raw, w, _connector, known)


CONNECTOR_PARSERS["mqtt"] = parse_mqtt_section


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901: ``/a/0/b`` into ``doc``; ``~1`` is '/', ``~0`` is '~'."""
    if pointer == "":
        return doc
    cur = doc
    for raw in pointer.split("/")[1:]:
        step = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, dict):
            if step not in cur:
                raise MalformedPayload(pointer, f"no member {step!r}")
            cur = cur[step]
        elif isinstance(cur, list):
            if not step.isdigit() or (step.startswith("0") and step != "0"):
                raise MalformedPayload(pointer, f"{step!r} is not an array index")
            index = int(step)
            if index >= len(cur):
                raise MalformedPayload(pointer, f"index {index} past the end ({len(cur)})")
            cur = cur[index]
        else:
            raise MalformedPayload(pointer, f"cannot step into {type(cur).__name__} at {step!r}")
    return cur


def _sparkplug_metrics(doc: Any) -> tuple[dict[str, tuple[Any, int | None]], int | None]:
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), list):
        raise MalformedPayload("metrics", "a Sparkplug-style payload needs a 'metrics' list")
    default_ts = doc.get("timestamp")
    out: dict[str, tuple[Any, int | None]] = {}
    for m in doc["metrics"]:
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            ts = m.get("timestamp", default_ts)
            out[m["name"]] = (m.get("value"), ts if isinstance(ts, int) else None)
    return out, default_ts if isinstance(default_ts, int) else None


def decode_message(
    cfg: MqttConfig,
    topic: str,
    payload: bytes,
    now_ns: int,
    on_error: Callable[[str, MalformedPayload], None],
) -> list[Sample]:
    """The samples one message carries for the signals whose filter matches its topic."""
    matching = [s for s in cfg.signals if aiomqtt.Topic(topic).matches(s.topic)]
    if not matching:
        return []
    if len(payload) > cfg.max_payload_bytes:
        on_error(
            "<payload>",
            MalformedPayload("payload", f"{len(payload)} bytes, limit {cfg.max_payload_bytes}"),
        )
        return []
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as err:  # bad UTF-8 is a ValueError too
        on_error("<payload>", MalformedPayload("payload", f"not JSON: {truncate(str(err))}"))
        return []
    out: list[Sample] = []
    if cfg.payload == "sparkplug-json":
        try:
            metrics, _ = _sparkplug_metrics(doc)
        except MalformedPayload as err:
            on_error("<payload>", err)
            return []
        for s in matching:
            try:
                if s.pointer not in metrics:
                    raise MalformedPayload(s.pointer, "no such metric")
                value, ts_ms = metrics[s.pointer]
                v = s.scaling.apply(to_float(value, s.pointer), s.pointer)
            except MalformedPayload as err:
                on_error(s.name, err)
                continue
            ts = ts_ms * 1_000_000 if ts_ms is not None and 0 < ts_ms < 2**53 else now_ns
            out.append(Sample(s.name, v, s.scaling.unit, ts))
        return out
    for s in matching:
        try:
            v = s.scaling.apply(to_float(resolve_pointer(doc, s.pointer), s.pointer), s.pointer)
        except MalformedPayload as err:
            on_error(s.name, err)
            continue
        out.append(Sample(s.name, v, s.scaling.unit, now_ns))
    return out


@dataclass
class MqttConnector(LinkConnector[MqttConfig]):
    KIND = "mqtt"
    messages: int = 0

    async def run(self, emit: Emit) -> None:
        cfg = self.config

        async def session(connected: Callable[[], None]) -> None:
            client = aiomqtt.Client(
                cfg.host,
                cfg.port,
                identifier=cfg.client_id,
                clean_session=False,  # the broker keeps our QoS 1 messages while we are away
                timeout=10.0,
            )
            # aiomqtt 2.5 has no manual-ack option, so reach its (private) paho client, whose
            # manual_ack_set/ack are public; test_what_a_stalled_agent_... guards this
            paho = client._client
            paho.manual_ack_set(True)
            async with client:
                for topic in sorted({s.topic for s in cfg.signals}):
                    await client.subscribe(topic, qos=cfg.qos)
                connected()
                async for message in client.messages:
                    self.messages += 1
                    raw = message.payload  # bytes from the broker; typed wider by aiomqtt
                    data = raw if isinstance(raw, bytes) else str(raw).encode()
                    samples = decode_message(
                        cfg, message.topic.value, data, time.time_ns(), self.bad
                    )
                    if samples:
                        await emit(samples)
                    paho.ack(message.mid, message.qos)  # taken by the runtime (or counted)

        await self.reconnector.run(session, (aiomqtt.MqttError, OSError))
