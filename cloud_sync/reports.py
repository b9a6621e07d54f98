"""Proof reports: the facts of a site over a period, as JSON, and the same facts as a PDF.

``site_report`` gathers the facts once (``Report``, a plain JSON-able dict); ``render_pdf``
only draws that dict, so the PDF can never say something the JSON does not. Every number
comes from what the hub stored and the signed micro-proofs themselves (gap records,
anomaly summaries, model hashes and drift tests are read from the signed payloads), and the
report names the log checkpoint it rests on, so an auditor can check any window in it.
"""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter
from typing import Any

from sqlalchemy import select

from attestation.cose import decode_sign1
from attestation.microproof import decode_payload
from cloud_sync.errors import ApiError
from cloud_sync.log import HubLog
from cloud_sync.storage import Store
from cloud_sync.storage.tables import devices, windows

__all__ = ["Report", "parse_period", "render_pdf", "site_report"]

Report = dict[str, Any]
MAX_PERIOD = dt.timedelta(days=366)


def parse_period(start: str, end: str) -> tuple[dt.datetime, dt.datetime]:
    """ISO 8601 ``from``/``to`` (UTC when no offset); names the bad parameter."""
    out = []
    for name, text in (("from", start), ("to", end)):
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError as err:
            raise ApiError(
                422, "invalid_request", f"{name}: {text[:40]!r} is not ISO 8601"
            ) from err
        out.append(stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC))
    if out[0] >= out[1]:
        raise ApiError(422, "invalid_request", "from: must be before to")
    if out[1] - out[0] > MAX_PERIOD:
        raise ApiError(422, "invalid_request", "to: a report covers at most 366 days")
    return out[0], out[1]


def _ns(stamp: dt.datetime) -> int:
    return int(stamp.timestamp() * 1e9)


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="seconds")


def site_report(
    store: Store, log: HubLog, site: str, start: dt.datetime, end: dt.datetime, now_ns: int
) -> Report:
    lo, hi = _ns(start), _ns(end)
    with store.engine.connect() as conn:
        devs = conn.execute(
            select(devices).where(devices.c.site == site).order_by(devices.c.name)
        ).all()
        if not devs:
            raise ApiError(404, "unknown_site", f"no device belongs to site {site!r}")
        rows = conn.execute(
            select(windows)
            .where(
                windows.c.utid.in_([d.utid for d in devs]),
                windows.c.last_ts_ns >= lo,
                windows.c.first_ts_ns < hi,
            )
            .order_by(windows.c.utid, windows.c.window)
        ).all()
    cp, note = log.checkpoint()
    by_device: dict[str, list[Any]] = {}
    for w in rows:
        by_device.setdefault(w.utid, []).append(w)
    out_devices = [_device_facts(d, by_device.get(d.utid, []), lo, hi) for d in devs]
    return {
        "site": site,
        "from": start.isoformat(timespec="seconds"),
        "to": end.isoformat(timespec="seconds"),
        "generated_at": _iso(now_ns),
        "checkpoint": {
            "origin": cp.origin,
            "size": cp.size,
            "root": cp.root.hex(),
            "note": note,
        },
        "totals": {
            "devices": len(out_devices),
            "windows": sum(d["windows"] for d in out_devices),
            "readings": sum(d["readings"] for d in out_devices),
            "gap_records": sum(len(d["gaps"]) for d in out_devices),
            "readings_lost": sum(
                g["last"] - g["first"] + 1 for d in out_devices for g in d["gaps"]
            ),
            "anomalous_windows": sum(len(d["anomalies"]) for d in out_devices),
        },
        "devices": out_devices,
    }


def _device_facts(d: Any, rows: list[Any], lo: int, hi: int) -> dict[str, Any]:
    gaps, anomalies, drift, models = [], [], [], {}
    per_hour: Counter[str] = Counter()
    covered = 0
    for w in rows:
        mp = decode_payload(decode_sign1(w.cose, require_tag=True).payload or b"")
        gaps += [
            {"window": w.window, "first": g.first, "last": g.last, "reason": g.reason}
            for g in mp.gaps
        ]
        if mp.model is not None:
            models[mp.model.sha256.hex()] = {"id": mp.model.id, "version": mp.model.version}
        if mp.anomaly is not None and mp.anomaly.count:
            anomalies.append(
                {
                    "window": w.window,
                    "at": _iso(w.first_ts_ns),
                    "anomalous_rows": mp.anomaly.count,
                    "max_score": round(mp.anomaly.max_score, 4),
                    "threshold": mp.anomaly.threshold,
                    "model_sha256": mp.model.sha256.hex() if mp.model else None,
                }
            )
        if mp.drift is not None:
            drift.append(
                {
                    "window": w.window,
                    "test": mp.drift.test,
                    "statistic": round(mp.drift.statistic, 6),
                    "p_value": round(mp.drift.p_value, 6),
                    "drifted": mp.drift.drifted,
                }
            )
        covered += max(0, min(w.last_ts_ns, hi) - max(w.first_ts_ns, lo))
        per_hour[_iso(w.first_ts_ns)[:13] + ":00"] += w.count
    return {
        "utid": d.utid,
        "name": d.name,
        "key_kind": d.key_kind,
        "revoked": bool(d.revoked),
        "windows": len(rows),
        "readings": sum(w.count for w in rows),
        "first_window": rows[0].window if rows else None,
        "last_window": rows[-1].window if rows else None,
        "coverage_pct": round(100 * covered / (hi - lo), 3),
        "gaps": gaps,
        "anomalies": anomalies,
        "drift_tests": drift,
        "drifted_windows": sum(x["drifted"] for x in drift),
        "models": [{"sha256": k, **v} for k, v in sorted(models.items())],
        "readings_per_hour": sorted(per_hour.items()),
    }


def render_pdf(report: Report) -> bytes:
    """Draw the report (A4): a cover with the checkpoint and totals, a page per device."""
    from reportlab.graphics.charts.barcharts import VerticalBarChart  # noqa: PLC0415
    from reportlab.graphics.charts.lineplots import LinePlot  # noqa: PLC0415
    from reportlab.graphics.shapes import Drawing, String  # noqa: PLC0415
    from reportlab.graphics.widgets.markers import makeMarker  # noqa: PLC0415
    from reportlab.lib import colors  # noqa: PLC0415
    from reportlab.lib.pagesizes import A4  # noqa: PLC0415
    from reportlab.lib.styles import getSampleStyleSheet  # noqa: PLC0415
    from reportlab.platypus import (  # noqa: PLC0415
        PageBreak,
        Paragraph,
        Preformatted,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    grid = TableStyle(
        [
            ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")),
            ("FONTSIZE", (0, 0), (-1, -1), 8),
        ]
    )

    def table(rows: list[list[Any]]) -> Table:
        t = Table([[str(c) for c in r] for r in rows], hAlign="LEFT")
        t.setStyle(grid)
        return t

    def bars(title: str, pairs: list[tuple[str, int]]) -> Drawing:
        drawing = Drawing(480, 170)
        drawing.add(String(0, 158, title, fontSize=9))
        chart = VerticalBarChart()
        chart.x, chart.y, chart.width, chart.height = 40, 20, 420, 120
        chart.data = [[v for _, v in pairs] or [0]]
        chart.categoryAxis.categoryNames = [k[11:16] for k, _ in pairs] or [""]
        chart.categoryAxis.labels.fontSize = 6
        chart.valueAxis.valueMin = 0
        chart.bars[0].fillColor = colors.HexColor("#3b6ea5")
        drawing.add(chart)
        return drawing

    def scores(title: str, points: list[tuple[int, float]]) -> Drawing:
        drawing = Drawing(480, 150)
        drawing.add(String(0, 138, title, fontSize=9))
        plot = LinePlot()
        plot.x, plot.y, plot.width, plot.height = 40, 20, 420, 100
        plot.data = [points]
        plot.lines[0].strokeColor = colors.HexColor("#b5402a")
        plot.lines[0].symbol = makeMarker("FilledCircle")  # one window is a point, not a line
        drawing.add(plot)
        return drawing

    r = report
    story: list[Any] = [
        Paragraph(f"FactoryOps proof report — site {r['site']}", styles["Title"]),
        Paragraph(
            f"Period {r['from']} to {r['to']} (generated {r['generated_at']})", styles["Normal"]
        ),
        Spacer(1, 10),
        Paragraph("Transparency-log checkpoint this report rests on", styles["Heading2"]),
        table(
            [
                ["origin", "tree size", "root (SHA-256)"],
                [r["checkpoint"]["origin"], r["checkpoint"]["size"], r["checkpoint"]["root"]],
            ]
        ),
        Spacer(1, 4),
        Preformatted(r["checkpoint"]["note"], styles["Code"]),
        Paragraph("Totals", styles["Heading2"]),
        table([list(r["totals"]), list(r["totals"].values())]),
    ]
    for d in r["devices"]:
        story += [
            PageBreak(),
            Paragraph(
                f"{d['name']} ({d['key_kind']} key{', REVOKED' if d['revoked'] else ''})",
                styles["Heading2"],
            ),
            Paragraph(d["utid"], styles["Code"]),
            table(
                [
                    [
                        "windows",
                        "readings",
                        "coverage %",
                        "gap records",
                        "anomalous windows",
                        "drifted windows",
                    ],
                    [
                        d["windows"],
                        d["readings"],
                        d["coverage_pct"],
                        len(d["gaps"]),
                        len(d["anomalies"]),
                        d["drifted_windows"],
                    ],
                ]
            ),
            Spacer(1, 6),
            bars("Readings per hour (signed windows)", d["readings_per_hour"]),
        ]
        if d["anomalies"]:
            story.append(
                scores(
                    "Anomaly max score per anomalous window",
                    [(a["window"], a["max_score"]) for a in d["anomalies"]],
                )
            )
            head = ["window", "at", "rows", "max score", "model sha256"]
            story.append(table([head] + [
                [a["window"], a["at"], a["anomalous_rows"], a["max_score"],
                 (a["model_sha256"] or "")[:16]]
                for a in d["anomalies"][:40]
            ]))  # fmt: skip
        if d["gaps"]:
            story += [Paragraph("Signed gap records", styles["Heading3"])]
            story.append(table([["window", "first seq", "last seq", "reason"]] + [
                [g["window"], g["first"], g["last"], g["reason"]] for g in d["gaps"][:40]
            ]))  # fmt: skip
        if d["models"]:
            story += [Paragraph("Models that scored these windows", styles["Heading3"])]
            story.append(
                table(
                    [["id", "version", "sha256"]]
                    + [[m["id"], m["version"], m["sha256"]] for m in d["models"]]
                )
            )
    buf = io.BytesIO()
    SimpleDocTemplate(buf, pagesize=A4, title=f"FactoryOps report {r['site']}").build(story)
    return buf.getvalue()
