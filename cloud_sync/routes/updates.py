"""Serving the TUF repository to agents (``/tuf/metadata/…``, ``/tuf/targets/…``) and the
updates page of the web view.

Metadata and targets are public: they are signed, and an agent checks every byte against
its trusted root (what they protect is integrity and freshness, not secrecy). Serving the
timestamp re-signs timestamp and snapshot first when they are past half their lifetime.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from cloud_sync.errors import ApiError
from cloud_sync.routes.deps import HubDeps
from cloud_sync.settings import HubSettings
from cloud_sync.updates.errors import UpdatesError
from cloud_sync.updates.repository import TufRepository
from cloud_sync.web.access_views import page_principal

__all__ = ["repository_of", "updates_router"]

_META = re.compile(r"^(?:[1-9][0-9]{0,9}\.(?:root|snapshot|targets)|timestamp)\.json$")
_TARGET_PART = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_TEMPLATES = Path(__file__).resolve().parent.parent / "web" / "templates"


def repository_of(settings: HubSettings) -> TufRepository:
    return TufRepository.open(settings.data_dir / "tuf", settings.data_dir / "tuf-keys")


def updates_router(deps: HubDeps) -> APIRouter:
    router = APIRouter()
    settings = deps.settings
    repo_dir = settings.data_dir / "tuf"
    templates = Jinja2Templates(directory=str(_TEMPLATES))

    def repo() -> TufRepository:
        try:
            return repository_of(settings)
        except UpdatesError as err:
            raise ApiError(404, "no_update_repository", str(err)) from err

    @router.get("/tuf/metadata/{name}", include_in_schema=False)
    def metadata(name: str) -> Response:
        if not _META.match(name):
            raise ApiError(404, "unknown_metadata", f"no metadata {name!r}")
        r = repo()
        if name == "timestamp.json":
            r.refresh()
        path = repo_dir / "metadata" / name
        if not path.is_file():
            raise ApiError(404, "unknown_metadata", f"no metadata {name!r}")
        return FileResponse(path, media_type="application/json")

    @router.get("/tuf/targets/{path:path}", include_in_schema=False)
    def target(path: str) -> Response:
        parts = path.split("/")
        if not all(_TARGET_PART.match(p) and p not in (".", "..") for p in parts):
            raise ApiError(404, "unknown_target", "no such target")
        file = repo_dir / "targets" / Path(*parts)
        if not file.is_file():
            raise ApiError(404, "unknown_target", "no such target")
        return FileResponse(file, media_type="application/octet-stream")

    @router.get("/updates", response_class=HTMLResponse, include_in_schema=False)
    def updates_page(request: Request) -> Response:
        who = page_principal(request, deps)
        if isinstance(who, Response):
            return who
        rows, versions = [], {}
        try:
            r = repository_of(settings)
        except UpdatesError as err:
            return templates.TemplateResponse(
                request, "updates.html", {"who": who, "rows": [], "error": str(err), "v": {}}
            )
        targets = r.targets().signed
        for path, info in sorted(targets.targets.items()):
            custom = info.custom if isinstance(info.custom, dict) else {}
            if custom.get("kind") in ("onnx", "config"):
                rows.append({"path": path, "length": info.length, **custom})
        versions = {
            "root": r.root_version(),
            "targets": targets.version,
            "timestamp_expires": r.timestamp().signed.expires.isoformat(),
            "now": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        rows.sort(key=lambda x: (str(x.get("family")), str(x.get("site")), -int(x["version"])))
        return templates.TemplateResponse(
            request, "updates.html", {"who": who, "rows": rows, "error": None, "v": versions}
        )

    return router
