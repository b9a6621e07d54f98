"""The 3D plant view: a site's equipment from a layout file, each piece coloured by the live
anomaly score of the device that watches it, a click through to the device's page.

A layout (``web/layouts/*.json``, or the hub's ``DATA_DIR/layouts/*.json`` which take
precedence) names pieces with a shape, position and size in metres and the device (by name)
that watches each. The score of a piece is its device's newest window's max anomaly score
over that window's threshold, read from the signed micro-proof itself: 1.0 is the limit.
The page draws with three.js (vendored under ``/static/vendor/three``, no CDN).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attestation.cose import decode_sign1
from attestation.microproof import decode_payload
from cloud_sync.errors import ApiError
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import may_read, validation_detail
from cloud_sync.storage import DeviceRow
from cloud_sync.web.access_views import page_principal

__all__ = ["Layout", "load_layout", "plant_router"]

_HERE = Path(__file__).resolve().parent
_BUILT_IN = _HERE / "layouts"
_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
MAX_LAYOUT_BYTES = 256 << 10  # a plant of a few hundred pieces is a few tens of KiB
MAX_PIECES = 500  # what a browser draws smoothly in software WebGL on a tablet


class Piece(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    label: str = Field(min_length=1, max_length=128)
    shape: Literal["box", "cylinder"]
    position: tuple[float, float, float]
    size: tuple[float, float, float]  # box: x, y, z; cylinder: diameter, height, diameter
    device: str = Field(min_length=1, max_length=128)  # the watching device's name


class Layout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    title: str = Field(max_length=200)
    units: Literal["m"] = "m"
    pieces: tuple[Piece, ...] = Field(min_length=1, max_length=MAX_PIECES)


def load_layout(name: str, data_dir: Path | None = None) -> Layout:
    """The layout called ``name``: the hub's own folder first, then the built-in ones."""
    if not _NAME.match(name):
        raise ApiError(422, "invalid_request", f"layout: {name[:64]!r} is not a layout name")
    folders = [data_dir / "layouts"] if data_dir is not None else []
    for folder in [*folders, _BUILT_IN]:
        path = folder / f"{name}.json"
        if path.is_file():
            data = path.read_bytes()
            if len(data) > MAX_LAYOUT_BYTES:
                raise ApiError(422, "bad_layout", f"{path.name}: over {MAX_LAYOUT_BYTES} bytes")
            try:
                return Layout.model_validate_json(data)
            except ValidationError as err:
                raise ApiError(
                    422, "bad_layout", f"{path.name}: {validation_detail(err.errors())}"
                ) from err
    raise ApiError(404, "unknown_layout", f"no layout {name!r}")


def _score(deps: HubDeps, device: DeviceRow) -> dict[str, Any]:
    """The device's newest window: its max anomaly score over the threshold, and when."""
    if device.head_window < 0:
        return {"score": None, "window": None, "at_ns": None}
    row = deps.store.window_at(device.utid, device.head_window)
    if row is None:
        return {"score": None, "window": None, "at_ns": None}
    mp = decode_payload(decode_sign1(row.cose, require_tag=True).payload or b"")
    a = mp.anomaly
    score = None if a is None or a.threshold <= 0 else a.max_score / a.threshold
    return {"score": score, "window": row.window, "at_ns": row.last_ts_ns}


def plant_document(deps: HubDeps, site: str, layout: Layout) -> dict[str, Any]:
    """The layout with each piece's device and live score (what the page draws)."""
    devices = {d.name: d for d in deps.store.list_devices() if d.site == site}
    scores = {name: _score(deps, d) for name, d in devices.items()}
    pieces = []
    for p in layout.pieces:
        d = devices.get(p.device)
        pieces.append(
            {
                **p.model_dump(),
                "utid": d.utid if d else None,
                **(scores[p.device] if d else {"score": None, "window": None, "at_ns": None}),
            }
        )
    return {"site": site, "layout": layout.name, "title": layout.title, "pieces": pieces}


def plant_router(deps: HubDeps) -> APIRouter:
    router = APIRouter()
    templates = Jinja2Templates(directory=str(_HERE / "templates"))

    @router.get("/v1/sites/{site}/plant")
    def plant_json(
        site: str,
        request: Request,
        layout: str = Query(default="pump_loop", max_length=64),
    ) -> dict[str, Any]:
        """The site's plant layout with each piece's live anomaly score (1.0 = limit)."""
        may_read(deps, request, site)
        return plant_document(deps, site, load_layout(layout, deps.settings.data_dir))

    @router.get("/plant", response_class=HTMLResponse, include_in_schema=False)
    def plant_page(
        request: Request,
        site: str = Query(default="demo", max_length=128),
        layout: str = Query(default="pump_loop", max_length=64),
    ) -> Response:
        who = page_principal(request, deps)
        if isinstance(who, Response):
            return who
        may_read(deps, request, site)
        doc = plant_document(deps, site, load_layout(layout, deps.settings.data_dir))
        return templates.TemplateResponse(
            request,
            "plant.html",
            {
                "who": who,
                "doc": doc,
                "api": f"/v1/sites/{site}/plant?layout={layout}",
                "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            },
        )

    return router
