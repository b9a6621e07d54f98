"""Readings that name themselves: text stays text (never a made-up NaN) from the OPC UA
DataValue to the spool and back to the exact leaf that was signed; a Bad value is NaN."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from asyncua import ua

from agent.connectors.base import BAD_ENCODING_LIMITS_EXCEEDED, QUALITY_BAD
from agent.connectors.common import MAX_TEXT_BYTES, Scaling, text_value
from agent.connectors.opcua import OpcUaSignal, samples_from_datavalue
from agent.sealer import seal
from agent.spool import Spool
from agent.window import ClosedWindow
from attestation.reading import Reading, encode_leaf
from attestation.signers.software import SoftwareSigner

SIGNAL = OpcUaSignal("recipe", "ns=2;s=Recipe", Scaling(unit="", scale=2.0))
NOW = 1_700_000_000_000_000_000


def _dv(value: object, status: int = 0) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value), StatusCode=ua.StatusCode(status))


def test_an_opc_ua_string_is_recorded_as_text() -> None:
    (s,) = samples_from_datavalue(SIGNAL, _dv("PVC-200"), NOW)
    assert (s.signal, s.value, s.quality) == ("recipe", "PVC-200", 0)


def test_localized_text_is_recorded_as_its_text() -> None:
    (s,) = samples_from_datavalue(SIGNAL, _dv(ua.LocalizedText("Störung", "de")), NOW)
    assert s.value == "Störung"


def test_a_datetime_is_recorded_as_rfc3339_utc_text() -> None:
    stamp = dt.datetime(2026, 12, 5, 7, 30, 1, 250000, tzinfo=dt.UTC)
    (s,) = samples_from_datavalue(SIGNAL, _dv(stamp), NOW)
    assert s.value == "2026-12-05T07:30:01.250000Z"


def test_an_array_is_one_reading_per_element_named_by_index() -> None:
    samples = samples_from_datavalue(SIGNAL, _dv([1.5, 2.0, 3.0]), NOW)
    assert [(s.signal, s.value) for s in samples] == [
        ("recipe[0]", 3.0),
        ("recipe[1]", 4.0),
        ("recipe[2]", 6.0),
    ]  # scaled like the scalar would be


def test_a_bad_value_is_nan_whatever_number_it_carried() -> None:
    (s,) = samples_from_datavalue(SIGNAL, _dv(42.0, 0x808C0000), NOW)  # BadSensorFailure
    assert isinstance(s.value, float) and math.isnan(s.value)
    assert s.quality == 0x808C0000


def test_a_structure_is_nan_with_the_bad_bit_never_dropped() -> None:
    (s,) = samples_from_datavalue(SIGNAL, _dv(b"\x00\x01"), NOW)
    assert isinstance(s.value, float) and math.isnan(s.value)
    assert s.quality & QUALITY_BAD


def test_a_text_past_the_leaf_budget_is_cut_and_says_so() -> None:
    text, flag = text_value("é" * MAX_TEXT_BYTES)
    assert len(text.encode()) <= MAX_TEXT_BYTES and text == "é" * (MAX_TEXT_BYTES // 2)
    assert flag == BAD_ENCODING_LIMITS_EXCEEDED
    assert text_value("short") == ("short", 0)


def test_a_numeric_looking_text_survives_the_spool_as_text(tmp_path: Path) -> None:
    signer = SoftwareSigner.generate()
    spool = Spool(tmp_path / "s.db")
    rs = (Reading(0, 1, "batch", "20", "", 0), Reading(1, 2, "temp", 20.0, "C", 0))
    st = spool.state()
    sealed = seal(ClosedWindow(rs), index=st.next_window, prev=st.prev_hash, signer=signer, iat=1)
    spool.commit(sealed, now_ns=0)
    _, back = spool.window_readings(0)
    assert [r.value for r in back] == ["20", 20.0]
    assert [encode_leaf(r) for r in back] == list(sealed.leaves)  # the leaves that were signed
    spool.close()
