"""The service's own routes: liveness with row counts, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from cloud_sync.routes.deps import HubDeps

__all__ = ["router"]


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()

    @api.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        """Prometheus exposition (text format 0.0.4)."""
        return Response(deps.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @api.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, **deps.store.counts()}

    return api
