"""Sparkplug B payloads as a third party's compiled official schema encodes them: our field
table agrees with it, aliases resolve through the BIRTH, and publisher sequence numbers turn
lost messages into source gaps and redeliveries into nothing (ADR 0036, 0037).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import parse_config
from agent.connectors.common import MalformedPayload
from agent.connectors.mqtt import MqttConfig, read_message
from agent.connectors.msgseq import PublisherSequences
from agent.connectors.sparkplug import AliasBook, decode_payload, payload_class
from agent.errors import ConfigError
from tests.conftest import require_module

NODE = "spBv1.0/plant/{type}/edge1"
DEVICE = "spBv1.0/plant/{type}/edge1/press3"


def official() -> Any:
    """Eclipse Tahu's sparkplug_b.proto as compiled by protoc and shipped on PyPI by a third
    party (sparkplug-b-packets): the encoder that is not our code."""
    require_module("sparkplub_b_packets", "dev dependency sparkplug-b-packets (uv sync)")
    from sparkplub_b_packets.core import sparkplug_b_pb2

    return sparkplug_b_pb2


def birth(seq: int, ts: int, device: bool = False) -> bytes:
    pb = official()
    p = pb.Payload(timestamp=ts, seq=seq)
    p.metrics.add(name="Temperature", alias=1, datatype=pb.Double, double_value=21.5)
    p.metrics.add(name="Count", alias=2, datatype=pb.Int16, int_value=(-3) & 0xFFFF)
    p.metrics.add(name="Mode", alias=3, datatype=pb.String, string_value="auto")
    if device:
        p.metrics.add(name="Pressure", alias=4, datatype=pb.Float, float_value=2.5)
    return bytes(p.SerializeToString())


def data(seq: int, ts: int, **by_alias: float) -> bytes:
    pb = official()
    p = pb.Payload(timestamp=ts, seq=seq)
    for alias, value in by_alias.items():
        p.metrics.add(alias=int(alias[1:]), datatype=pb.Double, double_value=value)
    return bytes(p.SerializeToString())


def _config(extra: str = "") -> MqttConfig:
    text = f"""
[device]
name = "gw"
[[mqtt]]
name = "spb"
url = "mqtt://127.0.0.1:1883"
payload = "sparkplug-b"
[[mqtt.signals]]
name = "temp"
topic = "spBv1.0/plant/+/edge1"
pointer = "Temperature"
unit = "C"
[[mqtt.signals]]
name = "count"
topic = "spBv1.0/plant/+/edge1"
pointer = "Count"
[[mqtt.signals]]
name = "mode"
topic = "spBv1.0/plant/+/edge1"
pointer = "Mode"
[[mqtt.signals]]
name = "pressure"
topic = "spBv1.0/plant/+/edge1/press3"
pointer = "Pressure"
{extra}"""
    (cfg,) = parse_config(text, "a.toml").connectors["mqtt"]
    assert isinstance(cfg, MqttConfig)
    return cfg


def test_our_field_table_matches_the_official_schema() -> None:
    ours = payload_class().DESCRIPTOR
    theirs = official().Payload.DESCRIPTOR
    for mine, other in (
        (ours, theirs),
        (ours.nested_types_by_name["Metric"], theirs.nested_types_by_name["Metric"]),
    ):
        for f in mine.fields:
            o = other.fields_by_name[f.name]
            assert (f.number, f.type) == (o.number, o.type), f.full_name


def test_aliases_resolve_through_the_birth() -> None:
    cfg, book, errors = _config(), AliasBook(), []
    got = read_message(
        cfg, NODE.format(type="NBIRTH"), birth(0, 1_000), 7, lambda s, e: errors.append(s), book
    )
    assert [(s.signal, s.value, s.ts_ns) for s in got.samples] == [
        ("temp", 21.5, 10**9), ("count", -3.0, 10**9), ("mode", "auto", 10**9),
    ]  # fmt: skip
    assert (got.publisher, got.seq, got.rebirth) == ("plant/edge1", 0, True)
    got = read_message(cfg, NODE.format(type="NDATA"), data(1, 2_000, a1=22.0), 7, print, book)
    assert [(s.signal, s.value) for s in got.samples] == [("temp", 22.0)]
    read_message(cfg, DEVICE.format(type="DBIRTH"), birth(2, 3_000, device=True), 7, print, book)
    got = read_message(cfg, DEVICE.format(type="DDATA"), data(3, 4_000, a4=3.25), 7, print, book)
    assert [(s.signal, s.value) for s in got.samples] == [("pressure", 3.25)]
    assert errors == []


def test_an_alias_without_its_birth_is_counted_not_guessed() -> None:
    errors: list[tuple[str, str]] = []
    got = read_message(
        _config(), NODE.format(type="NDATA"), data(5, 1, a1=1.0), 7,
        lambda s, e: errors.append((s, str(e))), AliasBook(),
    )  # fmt: skip
    assert got.samples == []
    assert errors[0][0] == "<alias>" and "rebirth" in errors[0][1]


def test_sequence_jumps_become_gaps_and_redeliveries_are_dropped() -> None:
    seqs = PublisherSequences(modulus=256)
    assert seqs.arrive("p", 254, 10, 0, rebirth=True).gap is None
    assert seqs.arrive("p", 255, 20, 0).gap is None
    assert seqs.arrive("p", 0, 30, 0).gap is None  # 255 -> 0 wraps, nothing lost
    assert seqs.arrive("p", 0, 30, 0).duplicate  # QoS 1 redelivery: same seq, same time
    lost = seqs.arrive("p", 4, 70, 0)  # 1, 2, 3 never arrived
    assert lost.lost == 3 and lost.gap is not None
    assert (lost.gap.source, lost.gap.first_ts_ns, lost.gap.last_ts_ns) == ("p", 30, 70)
    assert lost.gap.reason == "disconnected"
    assert seqs.arrive("p", 1, 60, 0).gap is None and seqs.restarts == 1  # back: a restart
    assert (seqs.duplicates, seqs.lost) == (1, 3)


def test_a_wrapping_counter_without_a_time_is_never_taken_for_a_redelivery() -> None:
    seqs = PublisherSequences(modulus=256)
    for n in range(600):  # the same seq comes round again every 256 messages
        assert not seqs.arrive("p", n % 256, None, n).duplicate


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_are_refused_by_name(raw: bytes) -> None:
    with contextlib.suppress(MalformedPayload):  # a refusal is the other allowed answer
        decode_payload(raw)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("spBv1.0/plant/NDATA/edge1", r"'\+' for the message type"),
        ("plant/+/x", "Sparkplug B filter"),
    ],
)
def test_check_config_refuses_a_filter_that_would_miss_the_birth(topic: str, message: str) -> None:
    text = (
        '[device]\nname = "gw"\n[[mqtt]]\nname = "s"\nurl = "mqtt://h"\npayload = "sparkplug-b"\n'
        f'[[mqtt.signals]]\nname = "a"\ntopic = "{topic}"\npointer = "A"\n'
    )
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(text, "a.toml")
    assert "mqtt[0].signals[0].topic" in str(err.value)


def test_a_json_sequence_field_states_messages_lost_upstream() -> None:
    text = (
        '[device]\nname = "gw"\n[[mqtt]]\nname = "j"\nurl = "mqtt://h"\n'
        'sequence_pointer = "/n"\ntimestamp_pointer = "/t"\ntimestamp_format = "unix_s"\n'
        '[[mqtt.signals]]\nname = "a"\ntopic = "site/+/a"\npointer = "/v"\n'
    )
    (cfg,) = parse_config(text, "a.toml").connectors["mqtt"]
    seqs, errors = PublisherSequences(), []
    verdicts = []
    for n, t in ((7, "100"), (8, "101.5"), (11, "104")):
        got = read_message(cfg, "site/m1/a", f'{{"n": {n}, "t": {t}, "v": 1}}'.encode(), 0, print)
        assert got.samples[0].ts_ns == int(float(t) * 1e9)  # the publisher's time, not ours
        verdicts.append(seqs.arrive(str(got.publisher), got.seq, got.ts_ns, 0))
    assert [v.lost for v in verdicts] == [0, 0, 2]
    assert verdicts[2].gap is not None and verdicts[2].gap.source == "site/m1/a"
    bad = read_message(
        cfg, "site/m1/a", b'{"n": 12, "t": "soon", "v": 1}', 0, lambda s, e: errors.append(s)
    )
    assert bad.samples == [] and errors == ["<timestamp>"]  # never a guessed time


def test_messages_of_an_unmapped_device_still_count_in_the_nodes_sequence() -> None:
    text = (
        '[device]\nname = "gw"\n[[mqtt]]\nname = "s"\nurl = "mqtt://h"\npayload = "sparkplug-b"\n'
        '[[mqtt.signals]]\nname = "temp"\ntopic = "spBv1.0/plant/+/edge1"\n'
        'pointer = "Temperature"\n'
    )
    (cfg,) = parse_config(text, "a.toml").connectors["mqtt"]
    assert cfg.topics == ["spBv1.0/plant/+/edge1/#"]  # the node and all its devices
    seqs, book = PublisherSequences(modulus=256), AliasBook()
    lost = []
    for topic, payload in [
        (NODE.format(type="NBIRTH"), birth(0, 1)),
        (DEVICE.format(type="DBIRTH"), birth(1, 2, device=True)),  # no signal maps press3
        (DEVICE.format(type="DDATA"), data(2, 3, a4=1.0)),
        (NODE.format(type="NDATA"), data(3, 4, a1=2.0)),
    ]:
        got = read_message(cfg, topic, payload, 0, print, book)
        lost.append(
            seqs.arrive(str(got.publisher), got.seq, got.ts_ns, 0, rebirth=got.rebirth).lost
        )
    assert lost == [0, 0, 0, 0] and got.samples[0].value == 2.0


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_any_datetime_or_timestamp_is_a_reading_or_named(value: int, ts: int) -> None:
    pb = official()
    p = pb.Payload(timestamp=ts, seq=0)
    p.metrics.add(name="When", datatype=pb.DateTime, long_value=value)
    (m,) = decode_payload(bytes(p.SerializeToString())).metrics
    assert (m.value is None) == bool(m.error)
    assert m.timestamp_ms is None or m.timestamp_ms * 1_000_000 < 2**63
