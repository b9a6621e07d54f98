"""Server-rendered web view of one device: signals as inline SVG charts, the proof chain, and
a "verify this reading" link to the receipt. No JavaScript, no CDN: it renders anywhere.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from attestation.errors import MalformedInput
from attestation.microproof import parse_microproof
from attestation.utid import parse_utid
from cloud_sync.access import Principal
from cloud_sync.anomalies import AnomalyBook
from cloud_sync.errors import ApiError
from cloud_sync.log import HubLog
from cloud_sync.settings import HubSettings
from cloud_sync.storage import DeviceRow, Store
from cloud_sync.web.access_views import page_principal

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


def _charts(store: Store, utid: str) -> list[Chart]:
    by_signal: dict[str, list[tuple[int, float, str]]] = {}
    for r in store.latest_readings(utid, at_least=MAX_POINTS * 16):
        by_signal.setdefault(r.signal, []).append((r.seq, r.value, r.unit))
    charts = []
    for signal, full in sorted(by_signal.items()):
        series = full[-MAX_POINTS:]
        pts, lo, hi = polyline([v for _, v, _ in series])
        charts.append(Chart(signal, series[-1][2], pts, lo, hi, series[-1][1], series[-1][0]))
    return charts


def _ns_utc(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ns: int | None, now_ns: int) -> str:
    if ns is None:
        return "never"
    s = max(0, (now_ns - ns) // 10**9)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def device_router(
    store: Store, settings: HubSettings, anomalies: AnomalyBook, log: HubLog
) -> APIRouter:
    router = APIRouter()
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    templates.env.filters["ns_utc"] = _ns_utc

    def visible(request: Request) -> tuple[Principal, list[DeviceRow]] | Response:
        who = page_principal(request, settings)
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
        rows = [
            {
                "d": d,
                "seen": _ago(d.last_seen_ns, now),
                "lag": f"{lag[d.utid] / 1e9:.1f} s" if d.utid in lag else "—",
                "enrollment": "TPM, attested" if d.key_kind == "tpm" else "software (dev)",
            }
            for d in devices
        ]
        return templates.TemplateResponse(
            request, "index.html", {"rows": rows, "counts": store.counts(), "who": who}
        )

    @router.get("/anomalies", response_class=HTMLResponse, include_in_schema=False)
    def anomaly_page(request: Request) -> Response:
        seen = visible(request)
        if isinstance(seen, Response):
            return seen
        _, devices = seen
        names = {d.utid: d.name for d in devices}
        events = [e for e in anomalies.recent(limit=500) if e["utid"] in names]
        return templates.TemplateResponse(
            request, "anomalies.html", {"events": events, "names": names, "who": seen[0]}
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
        who = page_principal(request, settings)
        if isinstance(who, Response):
            return who
        device = _device_for(who, utid)
        page = templates.TemplateResponse(
            request, "embed.html", {"device": device, "charts": _charts(store, utid)}
        )
        page.headers["content-security-policy"] = "frame-ancestors *"
        return page

    def _device_for(who: Principal, utid: str) -> DeviceRow:
        try:
            parse_utid(utid)
        except MalformedInput as err:
            raise ApiError(422, "invalid_request", str(err)) from err
        device = store.device(utid)
        if device is None or not who.can(device.site, "viewer"):
            raise ApiError(404, "unknown_device", f"{utid} is not enrolled with this hub")
        return device

    @router.get("/devices/{utid}", response_class=HTMLResponse, include_in_schema=False)
    def device_page(request: Request, utid: str) -> Response:
        who = page_principal(request, settings)
        if isinstance(who, Response):
            return who  # to the login page
        device = _device_for(who, utid)
        chain = []
        for w in store.windows_of(utid, limit=20):
            mp = parse_microproof(w.cose).proof
            chain.append(
                {
                    "window": w.window,
                    "first_seq": w.first_seq,
                    "last_seq": w.last_seq,
                    "count": w.count,
                    "gaps": [(g.first, g.last, g.reason) for g in mp.gaps],
                    "anomalies": mp.anomaly.count if mp.anomaly else None,
                    "max_score": round(mp.anomaly.max_score, 3) if mp.anomaly else None,
                    "model": mp.model.id if mp.model else None,
                    "root": w.root.hex()[:16],
                }
            )
        return templates.TemplateResponse(
            request,
            "device.html",
            {
                "device": device,
                "charts": _charts(store, utid),
                "chain": chain,
                "who": who,
                "can_revoke": who.can(device.site, "operator") and not device.revoked,
                "csrf": who.csrf or "",
            },
        )

    return router
