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

A QoS 1/2 message is acknowledged only once its readings are durable: ``emit`` returned and
the runtime's ``journaled()`` covers them (``mqtt_acks.DurableAcks``; a malformed message or
one that matched no signal is acknowledged once counted, in order). Until then the broker
holds it: at most its in-flight window (Mosquitto's ``max_inflight_messages``, 20) is on its
way to us, so a stalled runtime stops the broker instead of growing memory here, and a
message not yet durable when the agent stops, is killed or the connection drops is delivered
again (at least once; the repeat has the same value).

``payload = "node-v1"`` takes readings from firmware/ sensor nodes instead (docs/firmware.md):
no signal list, one topic filter, and a folder of node keys. Each message is verified by
``nodeauth.NodeGate`` (tag, replay, limits); a refused one is counted per node and dropped.
A verified reading becomes ``<node>.<sensor>`` samples plus ``<node>:boot`` and
``<node>:seq`` (the node's own counters, so a receipt shows which node message it was).

```toml
[[mqtt]]
name = "nodes"
url = "mqtt://127.0.0.1:1883"
payload = "node-v1"
topic = "factoryops/nodes/+"
nodes_dir = "nodes"        # <id>.key files, 32 bytes, mode 0600 (factoryops provision node)
silence_s = 30             # a registered node quiet this long is a source gap
```
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import ssl
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from agent.connectors.base import Emit, Journaled, Sample
from agent.connectors.common import (
    SCALING,
    LinkConnector,
    MalformedPayload,
    Scaling,
    SourceWatch,
    config_dir,
    parse_list_section,
    parse_scaling,
    parse_signals,
    parse_time_format,
    parse_timestamp,
    to_float,
    truncate,
)
from agent.connectors.mqtt_acks import DurableAcks, NodePair
from agent.connectors.msgseq import LOST_UPSTREAM, PublisherSequences
from agent.connectors.nodeauth import (
    KEY_BYTES,
    SENSOR_ERROR,
    UNKNOWN_NODE_LABEL,
    Instant,
    NodeGate,
    NodeLimits,
    NodeReading,
    NodeRefused,
    valid_node_id,
)
from agent.connectors.sparkplug import DATA_TYPES as SPB_DATA_TYPES
from agent.connectors.sparkplug import (
    MAX_TS_MS,
    NAMESPACE,
    SEQ_MODULUS,
    AliasBook,
    SpbMetric,
    decode_payload,
    parse_topic,
)
from agent.errors import AgentError
from agent.tomlcheck import TableKeys, Where
from agent.tomlcheck import choice as _choice
from agent.tomlcheck import get as _get
from agent.tomlcheck import get_int as _int
from attestation.durable import write_atomically
from attestation.microproof import SourceGap

__all__ = [
    "TABLES",
    "MqttConfig",
    "MqttConnector",
    "MqttSignal",
    "NodeFleet",
    "NodeKeyError",
    "decode_message",
    "load_node_keys",
    "node_samples",
    "resolve_pointer",
]

log = logging.getLogger(__name__)
PAYLOAD_KINDS = ("json", "sparkplug-json", "sparkplug-b", "node-v1")
REPLAY_STATE = "replay.json"  # in nodes_dir: the last (boot, seq) per node, across restarts
MAX_NODE_GAPS = 1024  # recent source gaps kept on the connector for status and tests


@dataclass(frozen=True, slots=True)
class MqttSignal:
    name: str
    topic: str
    pointer: str
    scaling: Scaling


@dataclass(frozen=True, slots=True)
class NodeFleet:
    """A ``node-v1`` section's fleet: where its nodes publish and where their keys are."""

    topic: str
    nodes_dir: Path
    limits: NodeLimits


class Secret(str):
    """A password: a ``str`` for the client, ``***`` in every repr, so no log or traceback
    that prints a config shows it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True, slots=True)
class MqttTls:
    """``mqtts://``: the broker's CA (None: the system's), our client certificate, and
    whether the broker's certificate must name the host of ``url``."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = self.verify_hostname  # the CA is always checked
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass(frozen=True, slots=True)
class JsonStamps:
    """Where a JSON payload carries its publisher's sequence number and time, if it does."""

    sequence_pointer: str | None = None
    timestamp_pointer: str | None = None
    timestamp_format: str = "unix_ms"


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
    nodes: NodeFleet | None = None
    tls: MqttTls | None = None
    username: str | None = None
    password: Secret | None = None
    stamps: JsonStamps = field(default_factory=JsonStamps)

    @property
    def topics(self) -> list[str]:
        topics = {s.topic for s in self.signals}
        if self.payload == "sparkplug-b":  # an edge node's seq counts its devices' messages too
            topics = {_whole_node(t) for t in topics}
        if self.nodes is not None:
            topics.add(self.nodes.topic)
        return sorted(topics)

    @property
    def url(self) -> str:  # for log lines: never the credentials
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


# The keys of an [[mqtt]] table come from these dataclasses (code review D16, ``TableKeys``).
_NODES = TableKeys(
    NodeFleet,
    keys={"limits": ("silence_s",)},  # seconds; the other limits are the protocol's
)
_TLS = TableKeys(MqttTls)
_STAMPS = TableKeys(JsonStamps)
_SIGNAL = TableKeys(MqttSignal, inline={"scaling": SCALING})
TABLES: Mapping[str, TableKeys] = {
    "mqtt[]": TableKeys(
        MqttConfig,
        keys={
            "host": ("url",),  # mqtt[s]://host[:port]
            "port": ("url",),
            "password": ("password_file", "password_env"),  # never the password itself
        },
        inline={"nodes": _NODES, "tls": _TLS, "stamps": _STAMPS},
    ),
    "mqtt[].signals[]": _SIGNAL,
}
# keys only one kind of section takes (refused, by name, in the others)
NODE_KEYS, TLS_KEYS, STAMP_KEYS = _NODES.accepted(), _TLS.accepted(), _STAMPS.accepted()


def _whole_node(topic: str) -> str:
    """``spBv1.0/<group>/+/<node>[/<device>]`` -> the filter for everything that node sends."""
    levels = topic.split("/")
    return "/".join([*levels[:4], "#"]) if len(levels) >= 4 and levels[3] != "#" else topic


def _topic(t: dict[str, Any], w: Where) -> str:
    topic: str = _get(t, w, "topic", str)
    if not topic or any(c in topic for c in "\0") or "#" in topic[:-1]:
        raise w.error("topic", f"{topic!r} is not an MQTT topic filter ('#' only at the end)")
    return topic


def _signal(t: dict[str, Any], w: Where) -> MqttSignal:
    _SIGNAL.check(t, w)
    return MqttSignal(
        _get(t, w, "name", str), _topic(t, w), _get(t, w, "pointer", str), parse_scaling(t, w)
    )


def _fleet(t: dict[str, Any], w: Where) -> NodeFleet:
    if "signals" in t:
        raise w.error("signals", "a node-v1 section maps no signals: nodes name their sensors")
    silence_s = _int(t, w, "silence_s", 1, 86_400, 30)
    return NodeFleet(
        topic=_topic(t, w),
        nodes_dir=config_dir(w) / _get(t, w, "nodes_dir", str),
        limits=NodeLimits(silence_ms=silence_s * 1000),
    )


def _file(t: dict[str, Any], w: Where, key: str) -> Path | None:
    name: str | None = _get(t, w, key, str, None)
    if name is None:
        return None
    path = config_dir(w) / name
    if not path.is_file():
        raise w.error(key, f"{path}: no such file")
    return path


def _tls(t: dict[str, Any], w: Where, scheme: str) -> MqttTls | None:
    if scheme != "mqtts":
        for name in sorted(TLS_KEYS & t.keys()):
            raise w.error(name, 'TLS settings need url = "mqtts://host[:port]"')
        return None
    cert, key = _file(t, w, "cert_file"), _file(t, w, "key_file")
    if (cert is None) != (key is None):
        raise w.error(
            "key_file" if key is None else "cert_file", "give cert_file and key_file together"
        )
    tls = MqttTls(_file(t, w, "ca_file"), cert, key, _get(t, w, "verify_hostname", bool, True))
    try:  # a wrong CA or a key that does not fit its certificate is a config error, by key
        tls.context()
    except (ssl.SSLError, OSError) as err:
        bad = "cert_file" if cert is not None and "key" in str(err).lower() else "ca_file"
        raise w.error(bad, f"cannot be used for TLS: {err}") from err
    return tls


def _password(t: dict[str, Any], w: Where, username: str | None) -> Secret | None:
    given = sorted({"password_file", "password_env"} & t.keys())
    if len(given) > 1:
        raise w.error("password_env", "give password_file or password_env, not both")
    if not given:
        return None
    if username is None:
        raise w.error(given[0], "a password needs a username")
    if given[0] == "password_env":
        var: str = _get(t, w, "password_env", str)
        if var not in os.environ:
            raise w.error("password_env", f"the environment variable {var} is not set")
        return Secret(os.environ[var])
    path = config_dir(w) / _get(t, w, "password_file", str)
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise w.error("password_file", f"{path}: cannot read: {err}") from err
    if info.st_mode & stat.S_IRWXO:
        raise w.error("password_file", f"{path}: mode {info.st_mode & 0o777:o}: others may read it")
    return Secret(text.split("\n", 1)[0].rstrip("\r"))  # the first line


def _stamps(t: dict[str, Any], w: Where, payload: str) -> JsonStamps:
    if payload != "json":
        for key in sorted(STAMP_KEYS & t.keys()):
            raise w.error(key, 'only a payload = "json" section takes this key')
        return JsonStamps()
    pointers = {}
    for key in ("sequence_pointer", "timestamp_pointer"):
        pointer: str | None = _get(t, w, key, str, None)
        if pointer is not None and not pointer.startswith("/"):
            raise w.error(key, "a JSON pointer starts with '/'")
        pointers[key] = pointer
    fmt = parse_time_format(t, w) if "timestamp_format" in t else "unix_ms"
    return JsonStamps(pointers["sequence_pointer"], pointers["timestamp_pointer"], fmt)


def _check_sparkplug(signals: tuple[MqttSignal, ...], w: Where) -> None:
    for i, s in enumerate(signals):
        levels = s.topic.split("/")
        if levels[0] != NAMESPACE or len(levels) < 3 or levels[2] not in ("+", "#"):
            raise w.error(
                f"signals[{i}].topic",
                f"{s.topic!r}: a Sparkplug B filter is {NAMESPACE}/<group>/+/<edge node>[/<device>]"
                " ('+' for the message type, so the BIRTH that names the aliases arrives too)",
            )


def _connector(t: dict[str, Any], w: Where) -> MqttConfig:
    url = _get(t, w, "url", str)
    try:  # urlsplit refuses a malformed [IPv6] host, .port a bad port: both ValueError
        parts = urlsplit(url)
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError as err:
        raise w.error("url", f"{url!r} is not mqtt[s]://host[:port] ({err})") from err
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise w.error("url", f"{url!r} is not mqtt[s]://host[:port]")
    if parts.username or parts.password:
        raise w.error("url", "credentials do not go in the URL: use username and password_file")
    name = _get(t, w, "name", str)
    payload = _choice(t, w, "payload", PAYLOAD_KINDS, "json")
    nodes = _fleet(t, w) if payload == "node-v1" else None
    if nodes is None:
        for key in sorted(NODE_KEYS & t.keys()):
            raise w.error(key, 'only a payload = "node-v1" section takes this key')
    signals = parse_signals(t, w, _signal) if nodes is None else ()
    if payload == "json":
        for i, s in enumerate(signals):
            if s.pointer and not s.pointer.startswith("/"):
                raise w.error(f"signals[{i}].pointer", "a JSON pointer starts with '/'")
    if payload == "sparkplug-b":
        _check_sparkplug(signals, w)
    username: str | None = _get(t, w, "username", str, None)
    return MqttConfig(
        name=name,
        host=parts.hostname,
        port=port,
        client_id=_get(t, w, "client_id", str, f"factoryops-{name}"),
        qos=_int(t, w, "qos", 0, 2, 1),
        payload=payload,
        max_payload_bytes=_int(t, w, "max_payload_bytes", 64, 16 << 20, 64 << 10),
        signals=signals,
        nodes=nodes,
        tls=_tls(t, w, parts.scheme),
        username=username,
        password=_password(t, w, username),
        stamps=_stamps(t, w, payload),
    )


def parse_mqtt_section(raw: Any, w: Where) -> tuple[MqttConfig, ...]:
    return parse_list_section(raw, w, _connector, TABLES["mqtt[]"])


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


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one message carries: its samples, and who numbered it how (for ``msgseq``)."""

    samples: list[Sample]
    publisher: str | None = None  # None: the message carries no sequence and no time
    seq: int | None = None
    ts_ns: int | None = None  # the publisher's own time of the message
    rebirth: bool = False  # the publisher's counter starts again here (Sparkplug NBIRTH)
    death: str | None = None  # an edge node that said it went offline (Sparkplug NDEATH)


_NOTHING = Decoded([])


def decode_message(
    cfg: MqttConfig,
    topic: str,
    payload: bytes,
    now_ns: int,
    on_error: Callable[[str, MalformedPayload], None],
) -> list[Sample]:
    """The samples one message carries for the signals whose filter matches its topic."""
    return read_message(cfg, topic, payload, now_ns, on_error).samples


def read_message(
    cfg: MqttConfig,
    topic: str,
    payload: bytes,
    now_ns: int,
    on_error: Callable[[str, MalformedPayload], None],
    aliases: AliasBook | None = None,
) -> Decoded:
    """One message: its samples for the signals whose filter matches its topic, and its
    publisher's sequence number and time where the payload kind carries them."""
    matching = [s for s in cfg.signals if aiomqtt.Topic(topic).matches(s.topic)]
    if not matching and cfg.payload != "sparkplug-b":  # Sparkplug: every message has a seq
        return _NOTHING
    if len(payload) > cfg.max_payload_bytes:
        on_error(
            "<payload>",
            MalformedPayload("payload", f"{len(payload)} bytes, limit {cfg.max_payload_bytes}"),
        )
        return _NOTHING
    if cfg.payload == "sparkplug-b":
        return _read_sparkplug_b(matching, topic, payload, now_ns, on_error, aliases or AliasBook())
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as err:  # bad UTF-8 is a ValueError too
        on_error("<payload>", MalformedPayload("payload", f"not JSON: {truncate(str(err))}"))
        return _NOTHING
    if cfg.payload == "sparkplug-json":
        return Decoded(_read_sparkplug_json(matching, doc, now_ns, on_error))
    return _read_json(cfg, matching, topic, doc, now_ns, on_error)


def _read_sparkplug_json(
    matching: list[MqttSignal],
    doc: Any,
    now_ns: int,
    on_error: Callable[[str, MalformedPayload], None],
) -> list[Sample]:
    try:
        metrics, _ = _sparkplug_metrics(doc)
    except MalformedPayload as err:
        on_error("<payload>", err)
        return []
    out: list[Sample] = []
    for s in matching:
        try:
            if s.pointer not in metrics:
                raise MalformedPayload(s.pointer, "no such metric")
            value, ts_ms = metrics[s.pointer]
            v = s.scaling.apply(to_float(value, s.pointer), s.pointer)
        except MalformedPayload as err:
            on_error(s.name, err)
            continue
        ts = ts_ms * 1_000_000 if ts_ms is not None and 0 < ts_ms < MAX_TS_MS else now_ns
        out.append(Sample(s.name, v, s.scaling.unit, ts))
    return out


def _json_seq(
    doc: Any, pointer: str | None, on_error: Callable[[str, MalformedPayload], None]
) -> int | None:
    if pointer is None:
        return None
    try:
        seq = resolve_pointer(doc, pointer)
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
            raise MalformedPayload(pointer, f"expected an integer 0..2**63-1, got {truncate(seq)}")
    except MalformedPayload as err:
        on_error("<sequence>", err)  # the readings still count; only this message's check is lost
        return None
    return seq


def _json_time(doc: Any, stamps: JsonStamps) -> int | None:
    """The publisher's time of a JSON message (raises ``MalformedPayload`` when unreadable)."""
    pointer = stamps.timestamp_pointer
    if pointer is None:
        return None
    raw = resolve_pointer(doc, pointer)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise MalformedPayload(pointer, f"expected a time, got {truncate(raw)}")
    return parse_timestamp(str(raw), stamps.timestamp_format, pointer)


def _read_json(
    cfg: MqttConfig,
    matching: list[MqttSignal],
    topic: str,
    doc: Any,
    now_ns: int,
    on_error: Callable[[str, MalformedPayload], None],
) -> Decoded:
    try:
        ts_ns = _json_time(doc, cfg.stamps)
    except MalformedPayload as err:
        on_error("<timestamp>", err)  # never a guessed time: the message is dropped
        return _NOTHING
    seq = _json_seq(doc, cfg.stamps.sequence_pointer, on_error)
    out: list[Sample] = []
    for s in matching:
        try:
            v = s.scaling.apply(to_float(resolve_pointer(doc, s.pointer), s.pointer), s.pointer)
        except MalformedPayload as err:
            on_error(s.name, err)
            continue
        out.append(Sample(s.name, v, s.scaling.unit, now_ns if ts_ns is None else ts_ns))
    stamped = seq is not None or ts_ns is not None
    return Decoded(out, topic if stamped else None, seq, ts_ns)


def _read_sparkplug_b(
    matching: list[MqttSignal],
    topic: str,
    payload: bytes,
    now_ns: int,
    on_error: Callable[[str, MalformedPayload], None],
    aliases: AliasBook,
) -> Decoded:
    where = parse_topic(topic)
    if where is None:
        on_error(
            "<payload>", MalformedPayload("topic", f"{truncate(topic)} is not a Sparkplug B topic")
        )
        return _NOTHING
    if where.type == "NDEATH":
        return Decoded([], death=where.node_key)
    if where.type not in SPB_DATA_TYPES:
        return _NOTHING  # commands and device deaths carry no readings
    try:
        spb = decode_payload(payload)
    except MalformedPayload as err:
        on_error("<payload>", err)
        return _NOTHING
    if where.type.endswith("BIRTH"):
        aliases.learn(where, spb.metrics)
    wanted: dict[str, list[MqttSignal]] = {}
    for s in matching:
        wanted.setdefault(s.pointer, []).append(s)
    out: list[Sample] = []
    for m in spb.metrics:
        try:
            name = aliases.name(where, m)
        except MalformedPayload as err:
            on_error("<alias>", err)
            continue
        ts_ms = m.timestamp_ms or spb.timestamp_ms
        ts = ts_ms * 1_000_000 if ts_ms is not None else now_ns
        for s in wanted.get(name, ()):
            sample = _spb_sample(s, name, m, ts, on_error)
            if sample is not None:
                out.append(sample)
    ts_ns = spb.timestamp_ms * 1_000_000 if spb.timestamp_ms is not None else None
    return Decoded(out, where.node_key, spb.seq, ts_ns, rebirth=where.type == "NBIRTH")


def _spb_sample(
    s: MqttSignal,
    name: str,
    m: SpbMetric,
    ts: int,
    on_error: Callable[[str, MalformedPayload], None],
) -> Sample | None:
    if m.value is None:
        on_error(s.name, MalformedPayload(name, m.error))
        return None
    if isinstance(m.value, str):
        return Sample(s.name, m.value, s.scaling.unit, ts, m.quality)
    try:
        return Sample(s.name, s.scaling.apply(m.value, name), s.scaling.unit, ts, m.quality)
    except MalformedPayload as err:
        on_error(s.name, err)
        return None


class NodeKeyError(AgentError):
    """A node key file the agent will not use (wrong size, readable by others, bad name)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(
            f"{path}: {message}",
            hint="provision the node again (factoryops provision node), which writes "
            "<id>.key with 32 bytes and mode 0600",
        )


def load_node_keys(nodes_dir: Path) -> dict[str, bytes]:
    """``<id>.key`` files of a nodes folder; refuses one that others could read (as ssh does)."""
    keys: dict[str, bytes] = {}
    if not nodes_dir.is_dir():
        raise NodeKeyError(nodes_dir, "no such folder (nodes_dir of a node-v1 section)")
    for path in sorted(nodes_dir.glob("*.key")):
        if not valid_node_id(path.stem):
            raise NodeKeyError(path, "the name is not a node id ([A-Za-z0-9_-], at most 32)")
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeKeyError(path, f"mode {info.st_mode & 0o777:o}: others may read it")
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise NodeKeyError(path, f"{len(key)} bytes, expected {KEY_BYTES}")
        keys[path.stem] = key
    return keys


def node_samples(reading: NodeReading, ts_ns: int) -> list[Sample]:
    """A verified node reading as samples: ``<node>.<sensor>`` for each value, then the
    node's own ``<node>:boot`` and ``<node>:seq`` (exact in a float below 2**53)."""
    out = [Sample(f"{reading.node}.{name}", v, unit, ts_ns) for name, v, unit in reading.values]
    out.append(Sample(f"{reading.node}:boot", float(reading.boot), "", ts_ns))
    out.append(Sample(f"{reading.node}:seq", float(reading.seq), "", ts_ns))
    return out


@dataclass
class MqttConnector(LinkConnector[MqttConfig]):
    KIND = "mqtt"
    messages: int = 0
    node_gate: NodeGate | None = None  # set when a node-v1 section runs
    # the latest source gaps handed to the runtime (bounded: for status and tests)
    node_gaps: collections.deque[SourceGap] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_NODE_GAPS)
    )
    aliases: AliasBook = field(default_factory=AliasBook)  # Sparkplug B: alias -> name
    sequences: PublisherSequences = field(init=False)  # redeliveries and upstream loss
    publishers: SourceWatch = field(default_factory=SourceWatch)  # edge nodes that died
    _gaps_logged: set[str] = field(default_factory=set)

    journaled: Journaled | None = None  # bound by the runtime: acks wait for the journal
    # node -> [boot, seq] whose reading is durable and acknowledged: the replay state saved
    durable: dict[str, list[int]] = field(default_factory=dict)
    _admitted: NodePair | None = None  # the node reading the last message carried
    clock: Callable[[], int] = time.time_ns  # what readings and source gaps are stamped with
    # what a node's silence is measured on: a wall-clock step (NTP, a bad RTC) is no silence
    ticks: Callable[[], int] = time.monotonic_ns

    def bind_journaled(self, journaled: Journaled) -> None:
        self.journaled = journaled

    def __post_init__(self) -> None:
        super().__post_init__()
        modulus = SEQ_MODULUS if self.config.payload == "sparkplug-b" else None
        self.sequences = PublisherSequences(modulus=modulus)

    def now(self) -> Instant:
        return Instant(self.clock(), self.ticks())

    def _admit_node(self, data: bytes, now: Instant) -> tuple[list[Sample], list[SourceGap]]:
        assert self.node_gate is not None  # only called for a node-v1 section
        try:
            reading = self.node_gate.admit(data, now)
        except NodeRefused as err:
            # the label is a registered node or one shared label: made-up ids stay bounded
            label = err.node if err.node in self.node_gate.keys else UNKNOWN_NODE_LABEL
            self.bad(f"node:{label}", MalformedPayload(err.reason, str(err)))
            return [], []
        if reading is None:  # the broker delivered the last message again
            return [], []
        ts_ns = self.node_gate.reading_ts_ns(reading, now.wall_ns)
        self._admitted = (reading.node, reading.boot, reading.seq)
        # a sensor the node says failed this turn is a source that did not produce
        failed = [
            SourceGap(f"{reading.node}.{sensor}", ts_ns, ts_ns, SENSOR_ERROR)
            for sensor, _ in reading.errors
        ]
        return node_samples(reading, ts_ns), self._record_gaps(failed)

    def _record_gaps(self, gaps: list[SourceGap]) -> list[SourceGap]:
        for gap in gaps:
            if not self.node_gaps or self.node_gaps[-1].source != gap.source:
                log.warning("mqtt %s: %s: %s", self.name, gap.source, gap.reason)
            self.node_gaps.append(gap)
        return gaps

    def silences(self) -> list[SourceGap]:
        """The silent nodes' source gaps to state now (recorded in ``node_gaps``)."""
        assert self.node_gate is not None  # only for a node-v1 section
        return self._record_gaps(self.node_gate.gaps(self.now()))

    async def _watch_nodes(self, state_file: Path, emit: Emit) -> None:
        """Once a second: silent nodes become source gaps (payload key 16), and the last
        (boot, seq) of every node goes to disk."""
        assert self.node_gate is not None
        saved: dict[str, list[int]] = {}
        while True:
            await asyncio.sleep(1.0)
            gaps = self.silences()
            if gaps:
                await emit([], gaps)
            state = self._replay_state_to_keep()
            if state != saved:
                write_atomically(state_file, json.dumps(state).encode(), 0o600)
                saved = state

    async def run(self, emit: Emit) -> None:
        fleet = self.config.nodes
        if fleet is None:
            await self._run_session(emit)
            return
        self.node_gate = NodeGate(load_node_keys(fleet.nodes_dir), fleet.limits, self.now())
        state_file = fleet.nodes_dir / REPLAY_STATE
        if state_file.exists():
            self.node_gate.restore(json.loads(state_file.read_bytes()))
        self.durable = self.node_gate.replay_state()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_nodes(state_file, emit), name=f"nodes[{self.name}]")
                await self._run_session(emit)
        finally:
            # a stop keeps the latest pairs it may keep, so a replay right after a restart is
            # refused; a stop by a crash elsewhere in the agent ends here too
            write_atomically(state_file, json.dumps(self._replay_state_to_keep()).encode(), 0o600)

    def _replay_state_to_keep(self) -> dict[str, list[int]]:
        """The last (boot, seq) per node to save. With acks after the journal, only pairs whose
        readings are durable: a message not yet durable is not acknowledged and comes again
        after a kill, a crash or a stop, and must then be admitted, not refused as its own
        replay (the latest pairs, saved as the agent stopped on a TPM error, lost a reading)."""
        assert self.node_gate is not None  # only for a node-v1 section
        return dict(self.durable) if self.journaled else self.node_gate.replay_state()

    def _judge(self, got: Decoded, now: int) -> tuple[list[Sample], list[SourceGap]]:
        """Drop a redelivery; a jump in its publisher's numbers, or an edge node's death and
        rebirth, becomes a source gap."""
        gaps: list[SourceGap] = []
        if got.death is not None:
            log.warning("mqtt %s: edge node %s sent its NDEATH", self.name, got.death)
            return [], [self.publishers.failed(got.death[:128], LOST_UPSTREAM, now)]
        if got.publisher is None:
            return got.samples, gaps
        if (back := self.publishers.ended(got.publisher[:128], now)) is not None:
            gaps.append(back)
        arrival = self.sequences.arrive(got.publisher, got.seq, got.ts_ns, now, rebirth=got.rebirth)
        if arrival.duplicate:
            return [], gaps
        if arrival.gap is not None:
            if got.publisher not in self._gaps_logged:
                self._gaps_logged.add(got.publisher)  # logged once per publisher, then counted
                log.warning(
                    "mqtt %s: %s: %d message(s) lost upstream (seq jumped to %s); stated as a "
                    "source gap, counted from now on",
                    self.name, got.publisher, arrival.lost, got.seq,
                )  # fmt: skip
            gaps.append(arrival.gap)
        return got.samples, gaps

    def _take(self, topic: str, data: bytes) -> tuple[list[Sample], list[SourceGap]]:
        self._admitted = None
        if self.config.nodes is not None:
            return self._admit_node(data, self.now())
        now = self.clock()
        got = read_message(self.config, topic, data, now, self.bad, self.aliases)
        return self._judge(got, now)

    async def _take_messages(self, client: aiomqtt.Client, emit: Emit, acks: DurableAcks) -> None:
        async for message in client.messages:
            self.messages += 1
            raw = message.payload  # bytes from the broker; typed wider by aiomqtt
            data = raw if isinstance(raw, bytes) else str(raw).encode()
            samples, gaps = self._take(message.topic.value, data)
            if samples or gaps:
                await emit(samples, gaps)
            acks.taken(message.mid, message.qos, self._admitted)  # acked once durable

    async def _run_session(self, emit: Emit) -> None:
        cfg = self.config

        async def session(connected: Callable[[], None], emit: Emit) -> None:
            client = aiomqtt.Client(
                cfg.host,
                cfg.port,
                identifier=cfg.client_id,
                clean_session=False,  # the broker keeps our QoS 1 messages while we are away
                timeout=10.0,
                username=cfg.username,
                password=cfg.password,
                tls_context=cfg.tls.context() if cfg.tls is not None else None,
            )
            # aiomqtt 2.5 has no manual-ack option, so reach its (private) paho client, whose
            # manual_ack_set/ack are public; test_what_a_stalled_agent_... guards this
            paho = client._client
            paho.manual_ack_set(True)
            acks = DurableAcks(paho.ack, self.journaled, self.durable)
            try:
                await self._serve(client, emit, acks, connected)
            finally:
                # aiomqtt 2.5 leaves the socket of a connect cancelled before its CONNACK to
                # paho's __del__, which calls back into the event loop, perhaps closed by then
                # (empicano/aiomqtt#377): close it now. reinitialise() is paho's public way,
                # and it drops aiomqtt's callbacks, so a socket that aiomqtt's executor thread
                # is still connecting when a stop lands (a window of milliseconds) is closed
                # by the collector later without calling into the loop.
                paho.reinitialise()

        await self.reconnector.run(session, (aiomqtt.MqttError, OSError), emit)

    async def _serve(
        self, client: aiomqtt.Client, emit: Emit, acks: DurableAcks, connected: Callable[[], None]
    ) -> None:
        """One connection: subscribe, then take messages until it ends."""
        cfg = self.config
        async with client:
            log.info(
                "mqtt %s: connected to %s as %s%s", self.name, cfg.url, cfg.client_id,
                f" (user {cfg.username})" if cfg.username else "",
            )  # fmt: skip
            for topic in cfg.topics:
                await client.subscribe(topic, qos=cfg.qos)
            log.info(
                "mqtt %s: subscribed to %s (QoS %d)",
                self.name,
                ", ".join(cfg.topics),
                cfg.qos,
            )
            connected()
            acker = asyncio.create_task(acks.run(), name=f"acks[{self.name}]")
            try:
                await self._take_messages(client, emit, acks)
            finally:  # what it had not acknowledged the broker delivers again
                acker.cancel()
