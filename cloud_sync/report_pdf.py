"""The proof report as a PDF an auditor can read and check: drawn only from the report's
JSON facts (``reports.site_report``), with the SHA-256 of their signed JSON twin printed on
the cover, so the PDF can never say something the signed JSON does not.

Layout (A4): a cover (site, period, what the report proves, the checkpoint wrapped in full,
totals explained with their units, the twin's hash), a "how to check this report" page with
the exact commands, then a section per device (facts, two charts with labelled axes, gap,
source-gap, anomaly and model tables). Every page has a footer with "page N of M".
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Group, Line, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    KeepTogether,
    PageBreak,
    Paragraph,
    Preformatted,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

__all__ = ["render_pdf"]

MARGIN = 18 * mm
WIDTH = A4[0] - 2 * MARGIN  # the frame every flowable must fit
NOTE_COLUMNS = 78  # characters of the checkpoint note a line (Courier 7.5 pt fits the frame)
MAX_ROWS = 40  # rows of a per-device table; the JSON twin has them all
ACCENT = colors.HexColor("#1f4e79")

_STYLES = getSampleStyleSheet()
BODY = ParagraphStyle("body", parent=_STYLES["Normal"], fontSize=9.5, leading=13)
SMALL = ParagraphStyle("small", parent=BODY, fontSize=8, leading=10.5)
H1 = ParagraphStyle("h1", parent=_STYLES["Title"], textColor=ACCENT, alignment=0)
H2 = ParagraphStyle("h2", parent=_STYLES["Heading2"], textColor=ACCENT, spaceBefore=10)
H3 = ParagraphStyle("h3", parent=_STYLES["Heading3"], spaceBefore=8)
CODE = ParagraphStyle("code", parent=_STYLES["Code"], fontSize=7.5, leading=9.5)
CELL = ParagraphStyle("cell", parent=SMALL, fontSize=7.5, leading=9.5)
HEAD = ParagraphStyle("head", parent=CELL, fontName="Helvetica-Bold")

# what each total means, in words and with its unit (the JSON keys stay machine names)
TOTALS = {
    "devices": ("Devices", "gateways of the site (each signs with its own key)"),
    "windows": ("Signed windows", "micro-proofs accepted in the period"),
    "readings": ("Readings", "readings inside those signed windows"),
    "gap_records": ("Gap records", "signed statements that readings were lost"),
    "readings_lost": ("Readings lost", "readings the gap records admit were lost"),
    "source_gaps": ("Source gaps", "signed statements that a source was silent"),
    "anomalous_windows": ("Anomalous windows", "windows with a row above its model's limit"),
}


class _NumberedCanvas(Canvas):  # type: ignore[misc]  # reportlab ships no type hints
    """Writes "page N of M" on every page: pages are kept until the total is known."""

    def __init__(self, *args: Any, footer: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []
        self._footer = footer

    def showPage(self) -> None:  # noqa: N802 - reportlab's name
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont("Helvetica", 7.5)
            self.setFillColor(colors.grey)
            self.drawString(MARGIN, 10 * mm, self._footer)
            self.drawRightString(A4[0] - MARGIN, 10 * mm, f"page {self._pageNumber} of {total}")
            super().showPage()
        super().save()


def _table(rows: Sequence[Sequence[Any]], widths: Sequence[float]) -> Table:
    """A grid whose cells wrap inside their column (nothing runs off the page)."""
    data = [
        [Paragraph(_cell(c), HEAD if i == 0 else CELL) for c in row] for i, row in enumerate(rows)
    ]
    t = Table(data, colWidths=[w * WIDTH for w in widths], hAlign="LEFT", repeatRows=1)
    t.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.3, colors.HexColor("#9aa5b1")),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e4ecf5")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return t


def _escape(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(value: Any) -> str:
    """A table cell's text; a long run without spaces (a hash) breaks every 32 characters,
    or it would push the column past the page."""
    return " ".join(_breakable(word) for word in _escape(value).split(" "))


def _breakable(word: str) -> str:
    if len(word) <= 24:
        return word
    return "<br/>".join(word[i : i + 32] for i in range(0, len(word), 32))


def _wrapped(text: str, width: int = NOTE_COLUMNS) -> str:
    out = []
    for line in text.splitlines():
        out += [line[i : i + width] for i in range(0, max(len(line), 1), width)]
    return "\n".join(out)


def _axis_chart(title: str, x_title: str, y_title: str, height: float = 150) -> Drawing:
    d = Drawing(WIDTH, height)
    d.add(String(0, height - 12, title, fontName="Helvetica-Bold", fontSize=8.5))
    d.add(String(WIDTH / 2, 2, x_title, fontSize=7, textAnchor="middle"))
    label = Group(String(0, 0, y_title, fontSize=7, textAnchor="middle"))
    label.transform = (0, 1, -1, 0, 8, height / 2)  # rotated 90 degrees, left of the axis
    d.add(label)
    return d


def _hourly_chart(pairs: list[tuple[str, int]]) -> Drawing:
    d = _axis_chart("Readings per hour in signed windows", "hour (UTC)", "readings")
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 45, 28, WIDTH - 60, 95
    chart.data = [[v for _, v in pairs] or [0]]
    step = max(1, len(pairs) // 12)  # at most ~12 hour labels
    chart.categoryAxis.categoryNames = [
        k[5:13].replace("T", " ") + "h" if i % step == 0 else "" for i, (k, _) in enumerate(pairs)
    ] or [""]
    chart.categoryAxis.labels.fontSize = 6
    chart.valueAxis.labels.fontSize = 6
    chart.valueAxis.valueMin = 0
    chart.bars[0].fillColor = ACCENT
    d.add(chart)
    return d


def _score_chart(points: list[tuple[int, float]]) -> Drawing:
    d = _axis_chart(
        "Highest anomaly score over the model's limit, per anomalous window",
        "window index",
        "score / limit",
    )
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 45, 28, WIDTH - 60, 95
    top = max([p[1] for p in points] + [1.2]) * 1.1
    plot.data = [points]
    plot.yValueAxis.valueMin, plot.yValueAxis.valueMax = 0, top
    plot.xValueAxis.labels.fontSize = plot.yValueAxis.labels.fontSize = 6
    plot.lines[0].strokeColor = colors.HexColor("#b71c1c")
    plot.lines[0].symbol = makeMarker("FilledCircle")  # one window is a point, not a line
    d.add(plot)
    y1 = plot.y + plot.height * (1.0 / top)
    d.add(
        Line(plot.x, y1, plot.x + plot.width, y1, strokeColor=colors.grey, strokeDashArray=[3, 2])
    )
    d.add(String(plot.x + plot.width - 2, y1 + 2, "limit 1.0", fontSize=6, textAnchor="end"))
    return d


def _cover(r: dict[str, Any], twin_sha256: str) -> list[Any]:
    cp = r["checkpoint"]
    totals = [["figure", "value", "what it counts"]]
    totals += [
        [TOTALS[k][0], f"{v:,}", TOTALS[k][1]] for k, v in r["totals"].items() if k in TOTALS
    ]
    return [
        Paragraph(f"Proof report — site {_escape(r['site'])}", H1),
        Paragraph(
            f"Period <b>{r['from']}</b> to <b>{r['to']}</b> (end excluded, UTC). "
            f"Generated {r['generated_at']} by the FactoryOps hub.",
            BODY,
        ),
        Spacer(1, 6),
        Paragraph(
            "<b>What this report proves.</b> Every figure below is computed from micro-proofs "
            "that the site's gateways signed with their device keys and that the hub's "
            "append-only transparency log holds. The log checkpoint below is the state of that "
            "log the report rests on: any reading counted here has a receipt that checks "
            "offline against this checkpoint, and any later checkpoint must extend it. Readings "
            "that were lost or sources that were silent are counted from the signed gap and "
            "source-gap records, never hidden.",
            BODY,
        ),
        Paragraph("Totals", H2),
        _table(totals, [0.25, 0.15, 0.60]),
        Paragraph("The transparency-log checkpoint this report rests on", H2),
        _table(
            [
                ["origin", "tree size (entries)", "root hash (SHA-256)"],
                [cp["origin"], f"{cp['size']:,}", cp["root"]],
            ],
            [0.35, 0.17, 0.48],
        ),
        Spacer(1, 4),
        Paragraph(
            f"Its signed note (C2SP tlog-checkpoint), in full; a line longer than "
            f"{NOTE_COLUMNS} characters continues on the next:",
            SMALL,
        ),
        Preformatted(_wrapped(cp["note"]), CODE),
        Paragraph("The signed JSON twin of this report", H2),
        Paragraph(
            "This PDF is drawn from the report's facts as JSON (<i>report.json</i>, delivered "
            "with it), which the hub signed with its log key (<i>report.json.cose</i>, a "
            "COSE_Sign1 with the payload detached). The SHA-256 of that JSON is:",
            BODY,
        ),
        Preformatted(twin_sha256, CODE),
    ]


def _how_to_check(r: dict[str, Any], twin_sha256: str) -> list[Any]:
    site = r["site"]
    steps = [
        (
            "1. The JSON twin is the hub's and unchanged",
            "factoryops verify-report report.json --trust hub-log-key.pem",
            f"It prints VALID and the SHA-256, which must read {twin_sha256[:16]}… as on the "
            "cover. hub-log-key.pem is the hub's log key, obtained from its operator (not "
            "from this report).",
        ),
        (
            "2. Any reading counted here is in the log",
            "curl -o receipt.json $HUB/v1/devices/UTID/readings/SEQ/receipt\n"
            "factoryops verify receipt.json --trust fleet-ca.pem --trust hub-log-key.pem",
            "The receipt links the reading to its signed window, its device's certificate and "
            "the log. Choose UTID from a device section and any SEQ in the period.",
        ),
        (
            "3. The log was not rewritten since",
            "factoryops verify receipt.json --trust fleet-ca.pem --trust hub-log-key.pem "
            "--remember checkpoints.json --hub $HUB",
            f"It checks that the hub's current log extends checkpoint {r['checkpoint']['size']:,} "
            "with a consistency proof, and remembers it for next time.",
        ),
        (
            "4. The figures are the JSON's",
            f"factoryops report --hub $HUB --site {site} --from {r['from']} --to {r['to']} "
            "--out again.pdf",
            "A report of the same period drawn later counts the same windows; totals can only "
            "grow if windows of the period arrived late (each is in the log, with its time).",
        ),
    ]
    out: list[Any] = [PageBreak(), Paragraph("How to check this report", H2)]
    for title, command, why in steps:
        out.append(
            KeepTogether(
                [
                    Paragraph(title, H3),
                    Preformatted(_wrapped(command, 90), CODE),
                    Paragraph(why, BODY),
                ]
            )
        )
    return out


def _device(d: dict[str, Any]) -> list[Any]:
    state = "REVOKED" if d["revoked"] else "active"
    facts = [
        ["figure", "value", "meaning"],
        ["Signed windows", f"{d['windows']:,}", "micro-proofs of this device in the period"],
        ["Readings", f"{d['readings']:,}", "readings in those windows"],
        ["Coverage", f"{d['coverage_pct']:.1f} %", "share of the period inside signed windows"],
        ["Gap records", f"{len(d['gaps']):,}", "signed statements of lost readings"],
        ["Source gaps", f"{len(d.get('source_gaps', [])):,}", "signed silent-source records"],
        ["Anomalous windows", f"{len(d['anomalies']):,}", "a row above the model's limit"],
        [
            "Drifted windows",
            f"{d['drifted_windows']:,} of {len(d['drift_tests']):,}",
            "windows whose scores' distribution left the training one (KS test, p < 0.01)",
        ],
    ]
    out: list[Any] = [
        PageBreak(),
        Paragraph(f"Device {_escape(d['name'])} — {d['key_kind']} key, {state}", H2),
        Paragraph(f"UTID {_escape(d['utid'])}", SMALL),
        Spacer(1, 4),
        _table(facts, [0.22, 0.18, 0.60]),
        Spacer(1, 6),
        _hourly_chart(d["readings_per_hour"]),
    ]
    if d["anomalies"]:
        pts = [(a["window"], a["max_score"] / (a["threshold"] or 1.0)) for a in d["anomalies"]]
        out.append(_score_chart(pts))
        out.append(Paragraph("Anomalous windows", H3))
        rows = [["window", "start (UTC)", "rows above limit", "max score / limit", "model"]]
        rows += [
            [
                a["window"],
                a["at"],
                a["anomalous_rows"],
                f"{a['max_score'] / (a['threshold'] or 1.0):.2f}",
                (a["model_sha256"] or "")[:16]
                + (f" fleet v{a['fleet_version']}" if a.get("fleet_version") else ""),
            ]
            for a in d["anomalies"][:MAX_ROWS]
        ]
        out.append(_table(rows, [0.12, 0.3, 0.16, 0.17, 0.25]))
    if d["gaps"]:
        out.append(Paragraph("Gap records (signed: these readings were lost)", H3))
        rows = [["window", "first seq", "last seq", "readings", "reason"]]
        rows += [
            [g["window"], g["first"], g["last"], g["last"] - g["first"] + 1, g["reason"]]
            for g in d["gaps"][:MAX_ROWS]
        ]
        out.append(_table(rows, [0.12, 0.15, 0.15, 0.13, 0.45]))
    if d.get("source_gaps"):
        out.append(Paragraph("Source gaps (signed: these sources were silent)", H3))
        rows = [["window", "source", "from (UTC)", "to (UTC)", "reason"]]
        rows += [
            [g["window"], g["source"], g["from"], g["to"], g["reason"]]
            for g in d["source_gaps"][:MAX_ROWS]
        ]
        out.append(_table(rows, [0.1, 0.24, 0.25, 0.25, 0.16]))
    if d["models"]:
        out.append(Paragraph("Models that scored these windows", H3))
        rows = [
            ["model id", "version", "fleet model (TUF update, job)", "SHA-256 of the ONNX file"]
        ]
        rows += [
            [
                m["id"],
                m["version"],
                f"v{m['fleet_version']}, job {m.get('job')}" if m.get("fleet_version") else "-",
                m["sha256"],
            ]
            for m in d["models"]
        ]
        out.append(_table(rows, [0.2, 0.1, 0.2, 0.5]))
    more = [k for k in ("anomalies", "gaps", "source_gaps") if len(d.get(k, [])) > MAX_ROWS]
    if more:
        out.append(Paragraph(f"Tables cut at {MAX_ROWS} rows; report.json has them all.", SMALL))
    return out


def render_pdf(report: dict[str, Any], twin_sha256: str) -> bytes:
    """Draw the report (A4) from its facts; ``twin_sha256`` is its signed JSON's hash."""
    r = report
    story = _cover(r, twin_sha256) + _how_to_check(r, twin_sha256)
    for d in r["devices"]:
        story += _device(d)
    footer = f"FactoryOps proof report · site {r['site']} · {r['from']} to {r['to']}"
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN,
        title=f"FactoryOps proof report, site {r['site']}",
    )

    def canvas(*args: Any, **kwargs: Any) -> _NumberedCanvas:
        return _NumberedCanvas(*args, footer=footer, **kwargs)

    doc.build(story, canvasmaker=canvas)
    return buf.getvalue()
