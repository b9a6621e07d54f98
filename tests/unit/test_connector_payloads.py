"""Outside payloads (MQTT now; serial lines and CSV rows share the rules) map to signals by
config; anything malformed is counted and named, never raised into the connector.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import parse_config
from agent.connectors.common import MalformedPayload
from agent.connectors.mqtt import MqttConfig, decode_message, resolve_pointer
from agent.errors import ConfigError

BASE = '[device]\nname = "gw"\n'
SECTION = """
[[mqtt]]
name = "line-1"
url = "mqtt://127.0.0.1:1883"
payload = "{payload}"
[[mqtt.signals]]
name = "pressure"
topic = "plant/+/telemetry"
pointer = "{p1}"
unit = "bar"
scale = 0.1
[[mqtt.signals]]
name = "flow"
topic = "plant/#"
pointer = "{p2}"
"""


def _config(payload: str = "json", p1: str = "/values/P", p2: str = "/values/F") -> MqttConfig:
    cfg = parse_config(BASE + SECTION.format(payload=payload, p1=p1, p2=p2), "a.toml")
    (mqtt,) = cfg.connectors["mqtt"]
    assert isinstance(mqtt, MqttConfig)
    return mqtt


def _decode(cfg: MqttConfig, topic: str, payload: bytes) -> tuple[list[Any], dict[str, int]]:
    errors: dict[str, int] = {}

    def count(signal: str, _: MalformedPayload) -> None:
        errors[signal] = errors.get(signal, 0) + 1

    return decode_message(cfg, topic, payload, 42, count), errors


def test_rfc6901_pointers() -> None:
    doc = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, "k": {"0": 3}}
    assert resolve_pointer(doc, "") == doc
    assert resolve_pointer(doc, "/foo/1") == "baz"
    assert resolve_pointer(doc, "/") == 0
    assert resolve_pointer(doc, "/a~1b") == 1
    assert resolve_pointer(doc, "/m~0n") == 8
    assert resolve_pointer(doc, "/k/0") == 3
    for bad in ("/foo/2", "/foo/01", "/foo/-", "/nope", "/foo/0/x"):
        with pytest.raises(MalformedPayload):
            resolve_pointer(doc, bad)


def test_a_json_message_feeds_every_matching_signal_scaled() -> None:
    cfg = _config()
    samples, errors = _decode(cfg, "plant/pump/telemetry", b'{"values": {"P": 52, "F": 3.5}}')
    assert [(s.signal, s.value, s.unit) for s in samples] == [
        ("pressure", pytest.approx(5.2), "bar"),
        ("flow", 3.5, ""),
    ]
    assert errors == {}
    samples, errors = _decode(cfg, "plant/pump/status", b'{"values": {"F": true}}')
    assert [(s.signal, s.value) for s in samples] == [("flow", 1.0)]  # only 'plant/#' matches
    assert _decode(cfg, "other/topic", b"not even json") == ([], {})  # not ours: not parsed


def test_malformed_messages_are_counted_per_signal_and_good_fields_still_arrive() -> None:
    cfg = _config()
    samples, errors = _decode(cfg, "plant/p/telemetry", b'{"values": {"P": "high", "F": 2}}')
    assert [s.signal for s in samples] == ["flow"]
    assert errors == {"pressure": 1}
    assert _decode(cfg, "plant/p/telemetry", b"\xff\xfe{")[1] == {"<payload>": 1}
    assert _decode(cfg, "plant/p/telemetry", b"[" * 100_000)[1] == {"<payload>": 1}
    big = json.dumps({"values": {"P": 1, "pad": "x" * 70_000}}).encode()
    assert _decode(cfg, "plant/p/telemetry", big)[1] == {"<payload>": 1}  # over the limit


def test_sparkplug_style_metrics_carry_their_own_timestamps() -> None:
    cfg = _config("sparkplug-json", p1="Pressure", p2="Flow")
    doc = {"timestamp": 1_700_000_000_000, "metrics": [
        {"name": "Pressure", "value": 40, "timestamp": 1_700_000_000_500},
        {"name": "Flow", "value": 7.5},
    ]}  # fmt: skip
    samples, errors = _decode(cfg, "plant/x/telemetry", json.dumps(doc).encode())
    assert [(s.signal, s.value, s.ts_ns) for s in samples] == [
        ("pressure", 4.0, 1_700_000_000_500_000_000),
        ("flow", 7.5, 1_700_000_000_000_000_000),
    ]
    _, errors = _decode(cfg, "plant/x/telemetry", b'{"metrics": [{"name": "Other", "value": 1}]}')
    assert errors == {"pressure": 1, "flow": 1}


@given(st.binary(max_size=2048))
def test_any_bytes_are_decoded_or_counted_never_raised(payload: bytes) -> None:
    samples, errors = _decode(_config(), "plant/p/telemetry", payload)
    assert len(samples) + sum(errors.values()) >= 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["values", "P", "F"]), JSON, max_size=3))
def test_any_json_document_is_decoded_or_counted_never_raised(doc: dict[str, Any]) -> None:
    samples, errors = _decode(_config(), "plant/p/telemetry", json.dumps(doc).encode())
    assert len(samples) + sum(errors.values()) == 2  # each of the two signals: a value or a count
    assert all(isinstance(s.value, float) and not math.isinf(s.value) for s in samples)


@pytest.mark.parametrize(
    ("change", "key", "line"),
    [
        (('url = "mqtt://127.0.0.1:1883"', 'url = "http://x"'), "mqtt[0].url", 6),
        # found by fuzz/targets.py config: urlsplit raised a bare ValueError
        (('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://127.0.]l0/a"'), "mqtt[0].url", 6),
        (('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://h:99999"'), "mqtt[0].url", 6),
        (('topic = "plant/#"', 'topic = "plant/#/x"'), "mqtt[0].signals[1].topic", 16),
        (('pointer = "/values/F"', 'pointer = "values/F"'), "mqtt[0].signals[1].pointer", 17),
        (('name = "flow"', 'name = "pressure"'), "mqtt[0].signals[1].name", 15),
        (("scale = 0.1", 'scale = "x"'), "mqtt[0].signals[0].scale", 13),
        (('payload = "json"', 'payload = "xml"'), "mqtt[0].payload", 7),
    ],
)
def test_config_errors_name_the_key_and_line(change: tuple[str, str], key: str, line: int) -> None:
    text = BASE + SECTION.format(payload="json", p1="/values/P", p2="/values/F")
    with pytest.raises(ConfigError) as err:
        parse_config(text.replace(*change), "a.toml")
    assert err.value.key == key
    assert err.value.line == line


CSV_SECTION = """
[[csv]]
name = "erp"
folder = "."
timestamp_column = "t"
timestamp_format = "unix_ms"
[[csv.signals]]
name = "w"
column = "w"
"""


@given(st.text(max_size=600))
def test_any_csv_text_gives_good_samples_or_numbered_bad_rows(body: str) -> None:
    from agent.connectors.csvdrop import CsvConfig, parse_rows

    (cfg,) = parse_config(BASE + CSV_SECTION, "/tmp/a.toml").connectors["csv"]
    assert isinstance(cfg, CsvConfig)
    samples, bad = parse_rows(cfg, "t,w\n" + body)
    assert all(b.line >= 2 and b.reason for b in bad)
    assert all(math.isfinite(s.value) and s.ts_ns >= 0 for s in samples)


def test_a_csv_row_count_is_exact() -> None:
    from agent.connectors.csvdrop import CsvConfig, parse_rows

    (cfg,) = parse_config(BASE + CSV_SECTION, "/tmp/a.toml").connectors["csv"]
    assert isinstance(cfg, CsvConfig)
    samples, bad = parse_rows(cfg, 't,w\n1,2\n"3,4\n5,x\n\n7,8\n')
    assert [(s.ts_ns, s.value) for s in samples] == [(1_000_000, 2.0), (7_000_000, 8.0)]
    assert [b.line for b in bad] == [3, 4]  # the stray quote takes no good row with it


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=12),
    st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=12),
)
def test_serial_lines_are_the_same_however_the_bytes_arrive(
    lines: list[bytes], cuts: list[int]
) -> None:
    from agent.connectors.serial_lines import LineSplitter

    stream = b"".join(lines)
    splitter, got, dropped, pos, i = LineSplitter(max_bytes=32), [], 0, 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out, d = splitter.feed(stream[pos : pos + step])
        got += out
        dropped += d
        pos, i = pos + step, i + 1
    # a line ends at \n only: a lone \r inside a line keeps it whole
    expected = list(stream.split(b"\n")[:-1])
    kept = [x + b"\n" for x in expected if len(x) + 1 <= 32]
    assert list(got) == kept
    assert dropped == len(expected) - len(kept)
