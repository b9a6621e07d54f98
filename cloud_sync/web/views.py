"""Server-rendered web view of one device: signals as inline SVG charts, the proof chain, and
a "verify this reading" link to the receipt. No JavaScript, no CDN: it renders anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from attestation.errors import MalformedInput
from attestation.microproof import parse_microproof
from attestation.utid import parse_utid
from cloud_sync.errors import ApiError
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
from cloud_sync.storage.tables import readings
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


def device_router(store: Store, settings: HubSettings) -> APIRouter:
    router = APIRouter()
    templates = Jinja2Templates(directory=str(_TEMPLATES))

    @router.get("/devices/{utid}", response_class=HTMLResponse, include_in_schema=False)
    def device_page(request: Request, utid: str) -> Response:
        who = page_principal(request, settings)
        if isinstance(who, Response):
            return who  # to the login page
        try:
            parse_utid(utid)
        except MalformedInput as err:
            raise ApiError(422, "invalid_request", str(err)) from err
        device = store.device(utid)
        if device is None or not who.can(device.site, "viewer"):
            raise ApiError(404, "unknown_device", f"{utid} is not enrolled with this hub")
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(readings.c.seq, readings.c.signal, readings.c.value, readings.c.unit)
                .where(readings.c.utid == utid)
                .order_by(readings.c.seq.desc())
                .limit(MAX_POINTS * 16)
            ).all()
        by_signal: dict[str, list[tuple[int, float, str]]] = {}
        for seq, signal, value, unit in reversed(rows):
            by_signal.setdefault(signal, []).append((seq, value, unit))
        charts = []
        for signal, full in sorted(by_signal.items()):
            series = full[-MAX_POINTS:]
            pts, lo, hi = polyline([v for _, v, _ in series])
            charts.append(Chart(signal, series[-1][2], pts, lo, hi, series[-1][1], series[-1][0]))
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
                "charts": charts,
                "chain": chain,
                "can_revoke": who.can(device.site, "operator") and not device.revoked,
                "csrf": who.csrf or "",
            },
        )

    return router
