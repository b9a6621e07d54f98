"""A rig's report: ``report.json`` (the twin, for machines) and ``report.html`` (for people:
charts drawn here as SVG with every fault window shaded, and a pass/fail row per check).

No JavaScript and nothing fetched: the page is one file a test engineer can mail.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attestation.durable import write_atomically

__all__ = ["write_report"]

W, H, PAD = 760, 150, 40  # chart size and margin, px
COLORS = {  # fault class -> shade
    "sensor": "#f4c542",
    "slave": "#e4572e",
    "plc": "#a05195",
    "broker": "#2f9c95",
    "agent": "#d62728",
    "node": "#1f77b4",
}
MAX_CHARTS = 8


def _shade(kind: str) -> str:
    return COLORS.get(kind.split("_", 1)[0], "#999999")


def _chart(
    title: str, points: Sequence[Sequence[float]], faults: Sequence[dict[str, Any]], end_s: float
) -> str:
    """One signal against rig time, fault windows shaded behind it."""
    values = [p[1] for p in points]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 1, hi + 1

    def x(t: float) -> float:
        return PAD + (W - 2 * PAD) * max(0.0, min(t, end_s)) / end_s

    def y(v: float) -> float:
        return H - PAD / 2 - (H - PAD) * (v - lo) / (hi - lo)

    shades = []
    for f in faults:
        start, stop = float(f["at_s"]), float(f.get("end_s", end_s))
        width = max(1.5, x(stop) - x(start))
        label = html.escape(f"inject[{f['inject']}] {f['kind']} {start:g}-{stop:g} s")
        shades.append(
            f'<rect x="{x(start):.1f}" y="{PAD / 2:.1f}" width="{width:.1f}" '
            f'height="{H - PAD:.1f}" fill="{_shade(str(f["kind"]))}" opacity="0.25">'
            f"<title>{label}</title></rect>"
        )
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img">'
        f'<rect x="{PAD}" y="{PAD / 2}" width="{W - 2 * PAD}" height="{H - PAD}" '
        'fill="none" stroke="#ccc"/>'
        + "".join(shades)
        + f'<polyline points="{line}" fill="none" stroke="#222" stroke-width="1"/>'
        f'<text x="2" y="{PAD / 2 + 10}" font-size="10">{hi:.4g}</text>'
        f'<text x="2" y="{H - PAD / 2}" font-size="10">{lo:.4g}</text>'
        f'<text x="{W - PAD}" y="{H - 4}" font-size="10" text-anchor="end">{end_s:g} s</text>'
        "</svg></figure>"
    )


def _html(doc: dict[str, Any]) -> str:
    end_s = float(doc.get("duration_s", 1.0)) + float(doc.get("settle_s", 0.0))
    faults = doc.get("injected", [])
    status = "PASSED" if doc["passed"] else ("INTERRUPTED" if doc.get("interrupted") else "FAILED")
    rows = "".join(
        f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{html.escape(c["name"])}</td>'
        f"<td>{'pass' if c['passed'] else 'FAIL'}</td><td>{html.escape(c['detail'])}</td></tr>"
        for c in doc["checks"]
    )
    charts = []
    for name, points in list(doc.get("series", {}).items())[:MAX_CHARTS]:
        charts.append(_chart(name, points, faults, end_s))
    resources = doc.get("resources", [])
    if resources:
        charts.append(
            _chart("agent RSS (MB)", [[r["t_s"], r["rss_mb"]] for r in resources], faults, end_s)
        )
        charts.append(
            _chart(
                "spool on disk (MB)", [[r["t_s"], r["disk_mb"]] for r in resources], faults, end_s
            )
        )
    injected = "".join(
        f"<tr><td>inject[{f['inject']}]</td><td>{html.escape(str(f['kind']))}</td>"
        f"<td>{f['at_s']:g}</td><td>{f.get('end_s', '(interrupted)')}</td></tr>"
        for f in faults
    )
    figures = html.escape(json.dumps(doc.get("figures", {}), indent=1, sort_keys=True))
    timings = html.escape(json.dumps(doc.get("timings", {}), sort_keys=True))
    error = f'<p class="fail">error: {html.escape(doc["error"])}</p>' if doc.get("error") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>HIL rig {html.escape(doc["rig"])}</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:1em auto}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ddd;padding:3px 6px;
font-size:13px;text-align:left}}.pass td:nth-child(2){{color:#1a7f37}}
.fail td:nth-child(2),p.fail{{color:#c62828;font-weight:bold}}figure{{margin:.5em 0}}
figcaption{{font-size:13px}}</style></head><body>
<h1>{status}: {html.escape(doc["rig"])}</h1>{error}
<p>Everything in this rig is SIMULATED unless the rig file names real hardware.
Shaded bands are fault windows (hover for which).</p>
<h2>Checks</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>{rows}</table>
<h2>Signals</h2>{"".join(charts)}
<h2>Faults injected</h2><table><tr><th>table</th><th>kind</th><th>from s</th><th>to s</th></tr>
{injected}</table>
<h2>Figures</h2><pre>{figures}</pre><h2>Timings</h2><pre>{timings}</pre>
</body></html>
"""


def write_report(out_dir: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    """Write both files atomically; their paths (html, json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    write_atomically(json_path, json.dumps(doc, indent=1, sort_keys=True).encode())
    write_atomically(html_path, _html(doc).encode())
    return html_path, json_path
