"""The web view's pure pieces: SVG time charts (axes, units, shading, escaping) and the
grouping of anomalous windows into events."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloud_sync.web.svgchart import Shade, nice_ticks, time_chart
from cloud_sync.web.views import group_events

T0 = 1_800_000_000 * 10**9


def test_a_chart_has_a_time_axis_a_unit_a_limit_and_escaped_text() -> None:
    pts = [(T0 + i * 10**9, float(i % 7)) for i in range(120)]
    svg = str(
        time_chart(
            pts,
            title="<script>x</script>",
            unit="m³/h",
            shades=[Shade(T0 + 10 * 10**9, T0 + 20 * 10**9, "anomaly", 'a "quoted" <b>')],
            limit=5.0,
        )
    )
    assert "time (UTC)" in svg and "m³/h" in svg and 'class="limit"' in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;b&gt;" in svg
    assert 'class="shade anomaly"' in svg
    assert svg.count("<circle") == 0  # 120 points: a line, no dots


def test_one_point_is_drawn_as_a_dot() -> None:
    svg = str(time_chart([(T0, 2.4)], title="score", unit="score / limit", limit=1.0))
    assert svg.count("<circle") == 1 and 'class="limit"' in svg


@given(st.floats(-1e9, 1e9), st.floats(0, 1e9))
def test_ticks_are_round_and_cover_the_range(lo: float, width: float) -> None:
    ticks = nice_ticks(lo, lo + width)
    assert 2 <= len(ticks) <= 12
    assert ticks[0] <= lo + 1e-6 * max(1.0, abs(lo)) or width == 0


def _w(utid: str, window: int, score: float) -> dict[str, object]:
    return {
        "utid": utid, "window": window, "first_ts_ns": T0 + window * 10**9,
        "last_ts_ns": T0 + window * 10**9 + 5, "anomalous_rows": 2, "max_score": score,
        "threshold": 2.0, "model_id": "twin", "model_sha256": "ab" * 32,
    }  # fmt: skip


def test_consecutive_windows_of_a_device_form_one_event_newest_first() -> None:
    events = group_events(
        [_w("a", 5, 3.0), _w("a", 6, 5.0), _w("a", 7, 4.0), _w("a", 9, 2.2), _w("b", 6, 9.0)]
    )
    assert [(e["utid"], e["first_window"], e["last_window"]) for e in events] == [
        ("a", 9, 9),
        ("a", 5, 7),
        ("b", 6, 6),
    ]
    run = next(e for e in events if e["first_window"] == 5)
    assert run["windows"] == 3 and run["rows"] == 6
    assert run["peak"] == 2.5 and run["peak_window"] == 6  # 5.0 over a threshold of 2.0
