"""Server-rendered web view of one device: signals as inline SVG charts, the proof chain, and
a "verify this reading" link to the receipt. No JavaScript, no CDN: it renders anywhere.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from attestation.microproof import ModelRef, parse_microproof
from attestation.reading import Reading
from cloud_sync.access import Principal
from cloud_sync.errors import ApiError
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import content_security_policy, device_or_404
from cloud_sync.storage import DeviceRow, Store
from cloud_sync.web.access_views import page_principal
from cloud_sync.web.svgchart import Shade, time_chart

__all__ = ["Chart", "device_router", "polyline"]

_TEMPLATES = Path(__file__).parent / "templates"
MAX_POINTS = 300  # per signal chart: the latest readings


@dataclass(frozen=True, slots=True)
class Chart:
    signal: str
    unit: str
    points: str  # SVG polyline points, 0..400 x 0..100
    lo: float
    hi: float
    last: float
    last_seq: int


def polyline(values: list[float], width: int = 400, height: int = 100) -> tuple[str, float, float]:
    """SVG ``points`` for ``values`` scaled into the box; NaN values are left out."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "", math.nan, math.nan
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    step = width / max(len(values) - 1, 1)
    pts = [
        f"{i * step:.1f},{height - (v - lo) / span * height:.1f}"
        for i, v in enumerate(values)
        if math.isfinite(v)
    ]
    return " ".join(pts), lo, hi


def charts_of(store: Store, utid: str) -> list[Chart]:
    """The newest readings of a device as one small chart a numeric signal."""
    by_signal: dict[str, list[tuple[int, float, str]]] = {}
    for r in store.latest_readings(utid, at_least=MAX_POINTS * 16):
        if isinstance(r.value, float):  # a text signal has no chart
            by_signal.setdefault(r.signal, []).append((r.seq, r.value, r.unit))
    charts = []
    for signal, full in sorted(by_signal.items()):
        series = full[-MAX_POINTS:]
        pts, lo, hi = polyline([v for _, v, _ in series])
        charts.append(Chart(signal, series[-1][2], pts, lo, hi, series[-1][1], series[-1][0]))
    return charts


# the time ranges a device page offers (query ?range=): label -> seconds (None: everything
# among the newest readings the page loads)
RANGES = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21_600, "24h": 86_400, "all": None}


def time_charts(
    store: Store, utid: str, shades: list[Shade], range_s: int | None
) -> list[dict[str, Any]]:
    """One chart a numeric signal over the chosen time range, anomalies and silences shaded."""
    by_signal: dict[str, list[Reading]] = {}
    for r in store.latest_readings(utid, at_least=MAX_POINTS * 16):
        if isinstance(r.value, float):  # a text signal has no chart
            by_signal.setdefault(r.signal, []).append(r)
    out = []
    for signal, every in sorted(by_signal.items()):
        rs = every
        if range_s is not None:
            newest = every[-1].ts_ns
            rs = [r for r in every if r.ts_ns >= newest - range_s * 10**9] or every[-1:]
        rs = rs[-MAX_POINTS * 4 :]
        unit = rs[-1].unit
        svg = time_chart(
            [(r.ts_ns, float(r.value)) for r in rs],
            title=f"{signal} [{unit}] over time",
            unit=unit,
            shades=shades,
        )
        out.append({"signal": signal, "unit": unit, "svg": svg,
                    "last": rs[-1].value, "last_seq": rs[-1].seq})  # fmt: skip
    return out


FLEET_ANOMALY_SCAN = 5000  # newest anomalous windows read for the fleet page's 24 h counts
SILENT_AFTER_NS = 300 * 10**9  # a device not heard from for 5 minutes needs a look
HEALTH_STATES = ("ok", "attention", "revoked")


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One device on the fleet page."""

    d: DeviceRow
    seen: str
    lag: str
    enrollment: str
    anomalies_24h: int
    health: str  # ok | attention | revoked
    why: str


def health_of(d: DeviceRow, anomalies_24h: int, now_ns: int) -> tuple[str, str]:
    """(state, why) of a device at a glance: revoked, needs attention (silent or anomalous
    in the last 24 h), or ok."""
    if d.revoked:
        return "revoked", "revoked: its proofs are refused"
    if d.last_seen_ns is None or now_ns - d.last_seen_ns > SILENT_AFTER_NS:
        return "attention", "silent for over 5 minutes"
    if anomalies_24h:
        return (
            "attention",
            f"{anomalies_24h} anomalous window{'s' if anomalies_24h != 1 else ''} in 24 h",
        )
    return "ok", "reporting, no anomaly in 24 h"


ANOMALY_SCAN = 5000  # newest anomalous windows the events page groups
EVENTS_PER_PAGE = 25


def _page_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise ApiError(422, "invalid_request", "page: a number from 1 to 10000")
    return int(text)


def group_events(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive anomalous windows of one device (window n, n+1, ...) as one event: its
    start, end, window range, peak score over the limit, rows and models; newest first."""
    by_device: dict[str, list[dict[str, Any]]] = {}
    for w in windows:
        by_device.setdefault(w["utid"], []).append(w)
    events = []
    for utid, ws in by_device.items():
        run: list[dict[str, Any]] = []
        for w in sorted(ws, key=lambda w: w["window"]):
            if run and w["window"] != run[-1]["window"] + 1:
                events.append(_event(utid, run))
                run = []
            run.append(w)
        if run:
            events.append(_event(utid, run))
    return sorted(events, key=lambda e: e["last_ts_ns"], reverse=True)


def _event(utid: str, run: list[dict[str, Any]]) -> dict[str, Any]:
    peak = max(run, key=lambda w: w["max_score"] / (w["threshold"] or 1.0))
    return {
        "utid": utid,
        "first_window": run[0]["window"],
        "last_window": run[-1]["window"],
        "first_ts_ns": run[0]["first_ts_ns"],
        "last_ts_ns": run[-1]["last_ts_ns"],
        "windows": len(run),
        "rows": sum(w["anomalous_rows"] for w in run),
        "peak": peak["max_score"] / (peak["threshold"] or 1.0),
        "peak_window": peak["window"],
        "models": sorted({f"{w['model_id'] or '?'} {(w['model_sha256'] or '')[:12]}" for w in run}),
    }


def _ns_utc(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ns: int | None, now_ns: int) -> str:
    if ns is None:
        return "never"
    s = max(0, (now_ns - ns) // 10**9)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def _model_label(m: ModelRef | None) -> str | None:
    """The model's id, and for a fleet model (TUF update) its version and producing job."""
    if m is None:
        return None
    if m.fleet_version is None:
        return m.id
    job = f", job #{m.job}" if m.job is not None else ""
    return f"{m.id} (fleet v{m.fleet_version}{job})"


def device_router(deps: HubDeps) -> APIRouter:
    router = APIRouter()
    store, anomalies, log = deps.store, deps.anomalies, deps.log
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    templates.env.filters["ns_utc"] = _ns_utc

    def visible(request: Request) -> tuple[Principal, list[DeviceRow]] | Response:
        who = page_principal(request, deps)
        if isinstance(who, Response):
            return who
        sites = who.sites("viewer")
        return who, [d for d in store.list_devices() if sites is None or d.site in sites]

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def fleet(request: Request) -> Response:
        seen = visible(request)
        if isinstance(seen, Response):
            return seen
        who, devices = seen
        now = time.time_ns()
        lag = store.sync_lags([d.utid for d in devices])
        day_ago = now - 86_400 * 10**9
        recent = anomalies.recent(limit=FLEET_ANOMALY_SCAN)
        per_day = Counter(e["utid"] for e in recent if e["last_ts_ns"] >= day_ago)
        rows = [
            FleetRow(
                d,
                _ago(d.last_seen_ns, now),
                f"{lag[d.utid] / 1e9:.1f} s" if d.utid in lag else "—",
                "TPM, attested" if d.key_kind == "tpm" else "software (dev)",
                per_day.get(d.utid, 0),
                *health_of(d, per_day.get(d.utid, 0), now),
            )
            for d in devices
        ]
        sites = sorted({d.site for d in devices})
        site = request.query_params.get("site", "")
        state = request.query_params.get("health", "")
        shown = [
            r for r in rows if (not site or r.d.site == site) and (not state or r.health == state)
        ]
        counts = {  # of what this principal may see (and the filters), never the fleet's
            "devices": len(shown),
            "windows": sum(r.d.head_window + 1 for r in shown),
            "readings": sum(r.d.n_readings for r in shown),
            "anomalies_24h": sum(r.anomalies_24h for r in shown),
            "attention": sum(1 for r in shown if r.health != "ok"),
        }
        return templates.TemplateResponse(
            request,
            "index.html",
            {"rows": shown, "counts": counts, "who": who, "sites": sites, "site": site,
             "health": state, "healths": HEALTH_STATES},
        )  # fmt: skip

    @router.get("/anomalies", response_class=HTMLResponse, include_in_schema=False)
    def anomaly_page(request: Request) -> Response:
        seen = visible(request)
        if isinstance(seen, Response):
            return seen
        _, devices = seen
        names = {d.utid: d.name for d in devices}
        device = request.query_params.get("device", "")
        page = _page_number(request.query_params.get("page", "1"))
        windows = [
            e for e in anomalies.recent(limit=ANOMALY_SCAN)
            if e["utid"] in names and (not device or e["utid"] == device)
        ]  # fmt: skip
        events = group_events(windows)
        first = (page - 1) * EVENTS_PER_PAGE
        return templates.TemplateResponse(
            request,
            "anomalies.html",
            {
                "events": events[first : first + EVENTS_PER_PAGE],
                "total": len(events),
                "windows": len(windows),
                "page": page,
                "pages": max(1, -(-len(events) // EVENTS_PER_PAGE)),
                "names": names,
                "device": device,
                "who": seen[0],
            },
        )

    @router.get("/log", response_class=HTMLResponse, include_in_schema=False)
    def log_page(request: Request) -> Response:
        seen = visible(request)
        if isinstance(seen, Response):
            return seen
        _, note = log.checkpoint()
        return templates.TemplateResponse(
            request, "log.html", {"note": note, "history": log.history(limit=200), "who": seen[0]}
        )

    @router.get("/embed/devices/{utid}", response_class=HTMLResponse, include_in_schema=False)
    def embed(request: Request, utid: str) -> Response:
        """A chart-only page for an iframe (the one page other sites may frame)."""
        who = page_principal(request, deps)
        if isinstance(who, Response):
            return who
        device = _device_for(who, utid)
        page = templates.TemplateResponse(
            request, "embed.html", {"device": device, "charts": charts_of(store, utid)}
        )
        page.headers["content-security-policy"] = content_security_policy(
            deps.settings.embed_frame_ancestors
        )
        return page

    def _device_for(who: Principal, utid: str) -> DeviceRow:
        device = device_or_404(store, utid)
        if not who.can(device.site, "viewer"):
            raise ApiError(404, "unknown_device", f"{utid} is not enrolled with this hub")
        return device

    @router.get("/devices/{utid}", response_class=HTMLResponse, include_in_schema=False)
    def device_page(request: Request, utid: str) -> Response:
        who = page_principal(request, deps)
        if isinstance(who, Response):
            return who  # to the login page
        device = _device_for(who, utid)
        range_key = request.query_params.get("range", "all")
        if range_key not in RANGES:
            raise ApiError(422, "invalid_request", f"range: one of {', '.join(RANGES)}")
        events = anomalies.recent(utid=utid, limit=200)
        silences = deps.silences.recent(utid=utid, limit=200)
        shades = [
            Shade(e["first_ts_ns"], e["last_ts_ns"], "anomaly",
                  f"window {e['window']}: {e['anomalous_rows']} rows above the limit")
            for e in events
        ] + [
            Shade(g["first_ts_ns"], g["last_ts_ns"], "silent",
                  f"{g['source']} silent: {g['reason']}")
            for g in silences
        ]  # fmt: skip
        chain = []
        for w in store.windows_of(utid, limit=20):
            # stored, so checked when accepted; a log may hold proofs from before the
            # canonical rule (ADR 0013), whose s may be high: show them all the same
            mp = parse_microproof(w.cose, canonical=False).proof
            chain.append(
                {
                    "window": w.window,
                    "first_seq": w.first_seq,
                    "last_seq": w.last_seq,
                    "count": w.count,
                    "gaps": [(g.first, g.last, g.reason) for g in mp.gaps],
                    "silent": len(mp.source_gaps),
                    # a chain continued from the hub's head after a lost spool (ADR 0027)
                    "reset": mp.reset,
                    "anomalies": mp.anomaly.count if mp.anomaly else None,
                    "max_score": round(mp.anomaly.max_score, 3) if mp.anomaly else None,
                    "model": _model_label(mp.model),
                    "root": w.root.hex()[:16],
                }
            )
        return templates.TemplateResponse(
            request,
            "device.html",
            {
                "device": device,
                "charts": time_charts(store, utid, shades, RANGES[range_key]),
                "ranges": list(RANGES),
                "range": range_key,
                "score_chart": _score_chart(store, utid, shades),
                "chain": chain,
                "silences": [
                    {**g, "first": _ns_utc(g["first_ts_ns"]), "last": _ns_utc(g["last_ts_ns"])}
                    for g in deps.silences.recent(utid=utid, limit=50)
                ],
                "who": who,
                "can_revoke": who.can(device.site, "operator") and not device.revoked,
                "csrf": who.csrf or "",
            },
        )

    return router


def _score_chart(store: Store, utid: str, shades: list[Shade]) -> Markup | None:
    """The newest windows' highest anomaly score over their limit, with the limit line."""
    points = []
    for w in reversed(store.windows_of(utid, limit=200)):
        mp = parse_microproof(w.cose, canonical=False).proof
        if mp.anomaly is not None and mp.anomaly.threshold > 0:
            points.append((w.last_ts_ns, mp.anomaly.max_score / mp.anomaly.threshold))
    if not points:
        return None
    title = "highest anomaly score over the model's limit, per signed window"
    return time_chart(points, title=title, unit="score / limit", shades=shades, limit=1.0)
