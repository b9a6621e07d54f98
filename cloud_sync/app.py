"""The hub's FastAPI app: wiring only.

``create_app(settings, *, store, clock)`` builds the services (``HubDeps``), the routers by
resource (``cloud_sync.routes``, the web pages in ``cloud_sync.web``), the error handlers
and the middleware. There are no module globals, and importing or calling it starts no
thread: the app's lifespan starts and stops the background work.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_sync.admission import BodyBudget, HeldBodies, Overloaded, overloaded_answer
from cloud_sync.errors import ApiError, HubFault
from cloud_sync.jobs.hub import hub_jobs
from cloud_sync.metrics import HubMetrics
from cloud_sync.routes import (
    HubDeps,
    devices,
    enrollment,
    log,
    operators,
    proofs,
    reports,
    rotation,
    service,
)
from cloud_sync.routes.deps import Clock
from cloud_sync.routes.request import content_security_policy, validation_detail
from cloud_sync.routes.updates import updates_router
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
from cloud_sync.web.access_views import access_router
from cloud_sync.web.plant import plant_router
from cloud_sync.web.views import device_router
from cloud_sync.web.widget import widget_router

__all__ = ["ERROR_RESPONSES", "ErrorBody", "FaultBody", "create_app", "hub_app"]

_log = logging.getLogger(__name__)
_CSP = content_security_policy()
_STATIC = Path(__file__).parent / "web" / "static"  # vendored scripts: no CDN


class ErrorBody(BaseModel):
    """Every refusal: a stable ``error`` code scripts can match, and a ``detail`` for people.

    Proof uploads add ``index`` (the refused proof), ``results`` (the ones before it, which
    were accepted) and, for ``out_of_order``, ``expected_window``.
    """

    model_config = ConfigDict(extra="allow")
    error: str
    detail: str


class FaultBody(ErrorBody):
    """The hub's own failure (every 5xx): ``error`` and ``detail`` as for a refusal, and the
    ``request_id`` (also the ``X-Request-Id`` header) under which the hub's log holds the
    traceback; nothing of the traceback is in the answer."""

    request_id: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": model, "description": why}
    for code, model, why in (
        (400, ErrorBody, "Malformed body"),
        (401, ErrorBody, "Not authenticated, or a signature or attestation that does not verify"),
        (403, ErrorBody, "Refused by policy (unknown, revoked or software device; untrusted TPM)"),
        (404, ErrorBody, "Unknown device, reading or site"),
        (409, ErrorBody, "Conflicts with the stored chain (fork, out of order)"),
        (413, ErrorBody, "Too large"),
        (415, ErrorBody, "Wrong content type or encoding"),
        (422, ErrorBody, "A field that is invalid; `detail` names it"),
        (500, FaultBody, "The hub failed (`internal`, `corrupt_store`); `request_id` finds it"),
        (501, FaultBody, "Not available in this installation"),
        (
            503,
            FaultBody,
            "Try again: the hub holds its budget of request bodies (`overloaded`, with"
            " `Retry-After` in seconds), its disk is full (`storage_full`), or a service it"
            " needs is unreachable (the job queue)",
        ),
    )
}
"""Every status a route may answer besides its own success, with its body (OpenAPI)."""
ERROR_RESPONSES[503]["headers"] = {
    "Retry-After": {
        "description": "Seconds to wait before sending the request again (`overloaded`)",
        "schema": {"type": "integer"},
    }
}


class _Timed:
    """Pure ASGI middleware: request latency by route template, and the headers every
    response carries. (Starlette's ``BaseHTTPMiddleware`` runs each request in a task group
    with memory streams: ~0.8 ms a request here, 13 % of a proof upload's CPU.)"""

    def __init__(self, app: ASGIApp, metrics: HubMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _with_security_headers(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")  # the template, never the raw URL
            self.metrics.request_latency(scope["method"], path, status).observe(
                time.perf_counter() - started
            )


_FRAMING = [(b"content-security-policy", _CSP.encode("latin-1")), (b"x-frame-options", b"DENY")]
_NOSNIFF = (b"x-content-type-options", b"nosniff")


def _with_security_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's raw headers (ASGI: lower-case names) and the ones every answer carries:
    pages may not be framed (clickjacking of the forms), except the embed widget, which sends
    its own policy; no MIME sniffing anywhere. Built on the raw list, as Starlette's
    ``MutableHeaders`` would (its scans and sets were half of this layer's ~5 µs a request)."""
    headers = [(k, v) for k, v in raw if k != b"x-content-type-options"]
    if not any(k == b"content-security-policy" for k, _ in headers):
        headers = [(k, v) for k, v in headers if k != b"x-frame-options"] + _FRAMING
    headers.append(_NOSNIFF)
    return headers


class _Direct:
    """Pure ASGI middleware: the listed routes served without the framework's per-request
    work. Fleet uploads (``POST /v1/proofs``, one proof every few seconds from each gateway)
    are most of a hub's requests, and FastAPI's routing over every route, dependency solving,
    exit stacks and exception wrappers cost about as much CPU as checking the proof (bench
    fleet, docs/performance.md). The routes stay registered with FastAPI, which documents
    them in /openapi.json; their handlers (``request -> Response``, no dependencies) are
    called here, with the app's own answers for a refusal and a fault."""

    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute]) -> None:
        self.app = app
        self.routes = {(m, r.path): r for r in routes for m in r.methods or ()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", "")))
        if route is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # the template for _Timed's metrics
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except ClientDisconnect:
            return  # the client went away before its body was in: nobody to answer
        except ApiError as err:
            response = await _api_error(request, err)
        except Exception as err:  # noqa: BLE001  # as Starlette's outermost handler: a JSON 500
            response = await _fault(request, err)
        await response(scope, receive, send)


class _HubApp(FastAPI):
    """FastAPI with the hub's own three layers outermost, outside Starlette's error and
    FastAPI's telemetry and body-limit wrappers (each a Python frame a request: ~10 % of an
    upload's time holding the GIL, py-spy at 12,000 gateways): ``_Timed`` (metrics,
    security headers) around ``HeldBodies`` (the hub's budget of request bodies held at
    once) around ``_Direct`` (the routes served directly) around the rest."""

    direct_routes: list[APIRoute]
    hub_metrics: HubMetrics
    body_budget: BodyBudget
    largest_body: int  # charged for a body of unknown length

    def build_middleware_stack(self) -> ASGIApp:
        inner = _Direct(super().build_middleware_stack(), self.direct_routes)
        held = HeldBodies(inner, self.body_budget, self.largest_body)
        return _Timed(held, self.hub_metrics)


async def _api_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, ApiError)
    return JSONResponse(err.body(), status_code=err.status)


async def _fault(request: Request, err: Exception) -> JSONResponse:
    """The hub's own failure, a ``HubFault`` or any exception nothing else handled: JSON
    with a request id, and the traceback in the log under that id (never in the answer).
    A request the body budget refused mid-way (``Overloaded``) is no failure: no traceback."""
    request_id = secrets.token_hex(8)
    if isinstance(err, Overloaded):
        return overloaded_answer(err, request_id)
    _log.error(
        "request %s: %s %s failed", request_id, request.method, request.url.path, exc_info=err
    )
    if isinstance(err, HubFault):
        status, code, detail = err.status, err.code, err.detail
    else:
        status, code, detail = 500, "internal", "the hub failed; its log has the details"
    return JSONResponse(
        {"error": code, "detail": detail, "request_id": request_id},
        status_code=status,
        headers={"x-request-id": request_id},
    )


async def _validation(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    return JSONResponse(
        {"error": "invalid_request", "detail": validation_detail(err.errors())}, status_code=422
    )


class _HttpErrors:
    """Starlette's own refusals (404, 405) as JSON. A 405 lists in ``Allow`` every method
    the path has: Starlette names only those of the first route whose path matched."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self.routes = [r for r in routes if isinstance(r, Route)]

    async def __call__(self, request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        if err.status_code >= 500:  # not Starlette's own today; a 5xx is a fault all the same
            return await _fault(request, HubFault(err.status_code, "http_error", str(err.detail)))
        headers = {k: v for k, v in (err.headers or {}).items() if k.lower() != "allow"}
        if err.status_code == 405:
            methods = {
                m
                for r in self.routes
                if r.matches(request.scope)[0] != Match.NONE
                for m in (r.methods or ())
            }
            headers["allow"] = ", ".join(sorted(methods))
        return JSONResponse(
            {"error": "http_error", "detail": str(err.detail)},
            status_code=err.status_code,
            headers=headers,
        )


def _errors_as_json(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The API document with every error answer under ``application/json``: FastAPI files
    the shared error models under a route's own media type, so the routes that answer text
    (the checkpoint note, metrics) documented their JSON refusals and faults as text/plain."""
    doc = build()  # FastAPI's, built once and kept: changed in place (twice changes nothing)
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            for status, answer in op.get("responses", {}).items():
                content = answer.get("content", {})
                if status[:1] in "45" and "application/json" not in content and content:
                    answer["content"] = {"application/json": next(iter(content.values()))}
    return doc


@asynccontextmanager
async def _lifespan(deps: HubDeps, _: FastAPI) -> AsyncIterator[None]:
    deps.start()
    try:
        yield
    finally:
        deps.stop()


def create_app(
    settings: HubSettings, *, store: Store | None = None, clock: Clock | None = None
) -> FastAPI:
    """The hub application over ``store`` (opened from ``settings.db_url`` when None)."""
    return hub_app(HubDeps.open(settings, store=store, clock=clock))


def hub_app(deps: HubDeps) -> FastAPI:
    """The app over built services: routers, error handlers, middleware, lifespan."""
    app = _HubApp(
        title="FactoryOps hub",
        version="1",
        responses=ERROR_RESPONSES,
        lifespan=partial(_lifespan, deps),
        # the hub's metrics are Prometheus (/metrics): FastAPI's native OpenTelemetry stays
        # off, and with it the check of three OpenTelemetry providers (and three environment
        # reads) that FastAPI.__call__ made on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # uploads first: a request is matched against the routes in order, and uploads are most
    # of the hub's traffic (~40 fewer patterns tried a request)
    routers = [
        make(deps)
        for make in (
            proofs.router,
            service.router,
            enrollment.router,
            devices.router,
            rotation.router,
            operators.router,
            reports.router,
            log.router,
            access_router,
            device_router,
            hub_jobs,
            updates_router,
            plant_router,
            widget_router,
        )
    ]
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HubFault, _fault)
    app.add_exception_handler(Exception, _fault)  # Starlette's outermost handler: a 500
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(
        StarletteHTTPException,
        _HttpErrors([*app.routes, *(r for router in routers for r in router.routes)]),
    )
    app.direct_routes = proofs.direct_routes(routers[0])
    app.hub_metrics = deps.metrics
    app.body_budget = deps.budget
    app.largest_body = deps.settings.limits.max_body_bytes
    app.openapi = partial(_errors_as_json, app.openapi)  # type: ignore[method-assign]  # FastAPI's documented way to change the document
    return app
