"""Sparkplug B (protobuf) payloads: topic names, the Payload message, and BIRTH aliases.
Pure: bytes and topics in, metrics or ``MalformedPayload`` out; no socket (ADR 0036).

The schema is declared here from the Sparkplug 3.0 specification's field table (the subset a
reader needs: payload timestamp/metrics/seq, a metric's name/alias/timestamp/datatype/is_null
and its scalar value) and decoded by the ``protobuf`` runtime in a private descriptor pool, so
no generated module is vendored and no other copy of the schema in the process can clash.
A test checks every field here against the official schema as compiled by a third party.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from agent.connectors.common import MalformedPayload, text_value

__all__ = [
    "DATA_TYPES",
    "MAX_METRICS",
    "MAX_TS_MS",
    "NAMESPACE",
    "SEQ_MODULUS",
    "AliasBook",
    "SpbMetric",
    "SpbPayload",
    "SpbTopic",
    "decode_payload",
    "parse_topic",
    "payload_class",
]

NAMESPACE = "spBv1.0"
SEQ_MODULUS = 256  # Sparkplug 3.0 §6.4.2: seq is 0..255, then 0 again
MAX_TS_MS = 2**63 // 1_000_000  # past this a time in ns leaves the signed range (year 2262)
MAX_METRICS = 10_000  # metrics in one payload; a BIRTH of a large node holds a few thousand
# message types that carry metrics (NCMD/DCMD go the other way; STATE is the host's own)
DATA_TYPES = frozenset({"NBIRTH", "NDATA", "DBIRTH", "DDATA"})
_ALL_TYPES = DATA_TYPES | {"NDEATH", "DDEATH", "NCMD", "DCMD"}

# Sparkplug 3.0 §6.4.16 DataType: the scalar ones a reading can hold
_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}  # Int8..Int64, two's complement in the unsigned field
_UNSIGNED = frozenset({5, 6, 7, 8})  # UInt8..UInt64
_FLOAT, _DOUBLE, _BOOLEAN, _DATETIME = 9, 10, 11, 13
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time datetime holds
_TEXT = frozenset({12, 14, 15})  # String, Text, UUID

# (name, number, type, label) of each field; types and labels as in descriptor.proto
_U32, _U64, _F32, _F64, _BOOL, _STR, _BYTES, _MSG = 13, 4, 2, 1, 8, 9, 12, 11
_OPTIONAL, _REPEATED = 1, 3
_METRIC_FIELDS = (
    ("name", 1, _STR),
    ("alias", 2, _U64),
    ("timestamp", 3, _U64),
    ("datatype", 4, _U32),
    ("is_historical", 5, _BOOL),
    ("is_transient", 6, _BOOL),
    ("is_null", 7, _BOOL),
)
_VALUE_FIELDS = (  # oneof value (dataset, template and extension values are not read)
    ("int_value", 10, _U32),
    ("long_value", 11, _U64),
    ("float_value", 12, _F32),
    ("double_value", 13, _F64),
    ("boolean_value", 14, _BOOL),
    ("string_value", 15, _STR),
    ("bytes_value", 16, _BYTES),
)
_PAYLOAD_FIELDS = (("timestamp", 1, _U64), ("seq", 3, _U64), ("uuid", 4, _STR))
_PACKAGE = "factoryops.sparkplug_b"  # not the official package name: this pool is our own


def _schema() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="factoryops_sparkplug_b.proto", package=_PACKAGE, syntax="proto2"
    )
    payload = f.message_type.add(name="Payload")
    for name, number, kind in _PAYLOAD_FIELDS:
        payload.field.add(name=name, number=number, type=kind, label=_OPTIONAL)
    payload.field.add(
        name="metrics",
        number=2,
        type=_MSG,
        label=_REPEATED,
        type_name=".factoryops.sparkplug_b.Payload.Metric",
    )
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    for name, number, kind in _METRIC_FIELDS:
        metric.field.add(name=name, number=number, type=kind, label=_OPTIONAL)
    for name, number, kind in _VALUE_FIELDS:
        metric.field.add(name=name, number=number, type=kind, label=_OPTIONAL, oneof_index=0)
    return f


def payload_class() -> Any:
    """The Payload message class (its own pool; also what tests encode with to compare)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_schema())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Payload"))


_PAYLOAD = payload_class()


@dataclass(frozen=True, slots=True)
class SpbTopic:
    """``spBv1.0/<group>/<type>/<edge node>[/<device>]``."""

    group: str
    type: str
    node: str
    device: str | None

    @property
    def node_key(self) -> str:
        """The edge node: the publisher whose seq counts every message it and its devices send."""
        return f"{self.group}/{self.node}"


def parse_topic(topic: str) -> SpbTopic | None:
    """The Sparkplug parts of a topic, or None for a topic that is not a node/device message."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[2] not in _ALL_TYPES:
        return None
    if not all(parts[1:]):
        return None
    return SpbTopic(parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None)


@dataclass(frozen=True, slots=True)
class SpbMetric:
    name: str | None  # None in a DATA message that sends the BIRTH's alias only
    alias: int | None
    timestamp_ms: int | None
    value: float | str | None  # None: is_null, or a type a reading cannot hold (see ``error``)
    quality: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class SpbPayload:
    timestamp_ms: int | None
    seq: int | None
    metrics: tuple[SpbMetric, ...]


def _signed(raw: int, bits: int) -> int:
    # Tahu writes Int8/Int16 both as the narrow and the 32-bit two's complement: take either
    for width in (bits, 32, 64):
        if raw < 1 << width:
            return raw - (1 << width) if raw >= 1 << (width - 1) else raw
    return raw


def _value(m: Any) -> tuple[float | str | None, int, str]:
    """(value, quality bits, error) of one metric."""
    if m.is_null:
        return None, 0, "is_null: the publisher has no value"
    kind = m.WhichOneof("value")
    dtype = m.datatype
    if kind is None:
        return None, 0, f"datatype {dtype}: no scalar value (DataSet, Template, arrays not read)"
    raw = getattr(m, kind)
    if kind == "string_value":
        text, quality = text_value(raw)
        return text, quality, ""
    if kind == "bytes_value":
        return None, 0, f"datatype {dtype}: bytes are not a reading"
    if dtype == _DATETIME and kind == "long_value":
        stamp = dt.datetime.fromtimestamp(raw / 1000, dt.UTC) if raw <= _LAST_MS else None
        if stamp is None:
            return None, 0, "DateTime past the time range"
        return stamp.isoformat().replace("+00:00", "Z"), 0, ""
    if dtype in _SIGNED_BITS and kind in ("int_value", "long_value"):
        raw = _signed(raw, _SIGNED_BITS[dtype])
    value = float(raw)
    if math.isinf(value) and not math.isinf(raw):
        return None, 0, "integer too large for a float"
    return value, 0, ""


def _ms(m: Any) -> int | None:
    ts = int(m.timestamp)
    return ts if m.HasField("timestamp") and 0 < ts < MAX_TS_MS else None


def decode_payload(data: bytes) -> SpbPayload:
    """A Sparkplug B payload's metrics; ``MalformedPayload`` for bytes that are not one."""
    try:
        msg = _PAYLOAD.FromString(data)
    except (DecodeError, RecursionError) as err:
        raise MalformedPayload("payload", f"not a Sparkplug B payload: {err}") from None
    if len(msg.metrics) > MAX_METRICS:
        raise MalformedPayload("metrics", f"{len(msg.metrics)} metrics, limit {MAX_METRICS}")
    metrics = []
    for m in msg.metrics:
        value, quality, error = _value(m)
        metrics.append(
            SpbMetric(
                name=m.name if m.HasField("name") else None,
                alias=int(m.alias) if m.HasField("alias") else None,
                timestamp_ms=_ms(m),
                value=value,
                quality=quality,
                error=error,
            )
        )
    return SpbPayload(_ms(msg), int(msg.seq) if msg.HasField("seq") else None, tuple(metrics))


@dataclass
class AliasBook:
    """alias -> metric name per edge node, learnt from its NBIRTH and its devices' DBIRTHs
    (Sparkplug 3.0 §6.4.6: an alias is unique within an edge node and its devices); an NBIRTH
    starts the node's book afresh. Bounded: at most ``max_nodes`` nodes, oldest dropped."""

    max_nodes: int = 4096
    _books: dict[str, dict[int, str]] = field(default_factory=dict)

    def learn(self, topic: SpbTopic, metrics: tuple[SpbMetric, ...]) -> None:
        if topic.type == "NBIRTH" or topic.node_key not in self._books:
            self._books.pop(topic.node_key, None)
            while len(self._books) >= self.max_nodes:
                del self._books[next(iter(self._books))]
            self._books[topic.node_key] = {}
        book = self._books[topic.node_key]
        for m in metrics:
            if m.name is not None and m.alias is not None:
                book[m.alias] = m.name

    def name(self, topic: SpbTopic, metric: SpbMetric) -> str:
        """The metric's name: its own, else the one its alias was born with."""
        if metric.name is not None:
            return metric.name
        if metric.alias is None:
            raise MalformedPayload("metrics", "a metric with neither name nor alias")
        book = self._books.get(topic.node_key)
        if book is None or metric.alias not in book:
            raise MalformedPayload(
                f"alias {metric.alias}",
                f"not in {topic.node_key}'s BIRTH (the agent joined after it: "
                "ask the edge node to rebirth)",
            )
        return book[metric.alias]
