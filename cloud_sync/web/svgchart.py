"""Time-series charts as server-drawn SVG: a time axis, a value axis with the unit, the
series, shaded intervals (anomalous windows, silent sources) and an optional limit line.

Pure: values in, markup out (no script, so the pages keep their strict CSP). Text is
escaped; every number is formatted here, so the template only places the string.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = ["Shade", "nice_ticks", "time_chart"]

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 62, 12, 12, 34  # room for tick labels and axis titles
MARKED_POINTS = 60  # up to this many points each gets a dot (one window is a point, not a line)
SHADE_COLOURS = {"anomaly": "#c62828", "silent": "#616e7c"}


@dataclass(frozen=True, slots=True)
class Shade:
    """An interval to shade behind the series: ``kind`` is ``anomaly`` or ``silent``."""

    first_ns: int
    last_ns: int
    kind: str
    label: str


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    raw = (hi - lo) / max(1, n - 1)
    if not raw > 1e-9 * max(1.0, abs(lo)):  # no span, or one too small to draw or divide
        hi = lo + max(abs(lo), 1.0)
        raw = (hi - lo) / max(1, n - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [
        first + i * step
        for i in range(int((hi - first) / step) + 2)
        if first + i * step <= hi + step / 2
    ]


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" class="{cls}"/>'


def _text(x: float, y: float, text: str, cls: str = "tick", anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{text}</text>'


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _clock(ns: float, span_s: float) -> str:
    t = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    if span_s > 2 * 86_400:
        return t.strftime("%m-%d %H:%M")
    return t.strftime("%H:%M:%S" if span_s < 600 else "%H:%M")


def time_chart(
    points: Sequence[tuple[int, float]],
    *,
    title: str,
    unit: str,
    shades: Sequence[Shade] = (),
    limit: float | None = None,
) -> Markup:
    """An SVG chart of (ts_ns, value) points, oldest first (markup a template places as is:
    every text in it is escaped here)."""
    pts = [(t, v) for t, v in points if math.isfinite(v)]
    if not pts:
        return _markup(
            f'<svg class="tchart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">'
            f"<title>{escape(title)}: no data</title></svg>"
        )
    t0, t1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
    values = [v for _, v in pts] + ([limit] if limit is not None else [])
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.05 or 1.0), hi + (abs(hi) * 0.05 or 1.0)
    ticks = nice_ticks(lo, hi)
    lo, hi = min([lo, *ticks]), max([hi, *ticks])
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return TOP + (1 - (v - lo) / (hi - lo)) * ph

    out = [
        f'<svg class="tchart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="plot"/>',
    ]
    for s in shades:
        a, b = max(s.first_ns, t0), min(s.last_ns, t1)
        if b < a:
            continue
        w = max(2.0, x(b) - x(a))
        out.append(
            f'<rect x="{x(a):.1f}" y="{TOP}" width="{w:.1f}" height="{ph}" '
            f'class="shade {s.kind}" fill="{SHADE_COLOURS.get(s.kind, "#999")}">'
            f"<title>{escape(s.label)}</title></rect>"
        )
    for v in ticks:
        out.append(_line(LEFT, y(v), LEFT + pw, y(v), "grid"))
        out.append(_text(LEFT - 6, y(v) + 3, _fmt(v), anchor="end"))
    span_s = (t1 - t0) / 1e9
    shown = set()
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        label = _clock(t, span_s)
        if label in shown:  # a span shorter than the clock's resolution: one label is enough
            continue
        shown.add(label)
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(_line(x(t), TOP + ph, x(t), TOP + ph + 4, "axis"))
        out.append(_text(x(t), TOP + ph + 15, label, anchor=anchor))
    out.append(_text(LEFT + pw / 2, HEIGHT - 3, "time (UTC)", "axis-title"))
    out.append(
        f'<text transform="translate(12 {TOP + ph / 2:.0f}) rotate(-90)" class="axis-title" '
        f'text-anchor="middle">{escape(unit) or "value"}</text>'
    )
    if limit is not None:
        out.append(_line(LEFT, y(limit), LEFT + pw, y(limit), "limit"))
        out.append(_text(LEFT + pw - 4, y(limit) - 4, "limit", anchor="end"))
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
    out.append(f'<polyline points="{line}" class="series"/>')
    if len(pts) <= MARKED_POINTS:  # few points: each one visible, not only the line between
        out += [f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" class="point"/>' for t, v in pts]
    out.append(_line(LEFT, TOP, LEFT, TOP + ph, "axis"))
    out.append(_line(LEFT, TOP + ph, LEFT + pw, TOP + ph, "axis"))
    out.append("</svg>")
    return _markup("".join(out))


def _markup(svg: str) -> Markup:
    return Markup(svg)  # noqa: S704 - built here from numbers and escape()d text only
