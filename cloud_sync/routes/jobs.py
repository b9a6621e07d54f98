"""The jobs API and pages: submit, list, show, cancel; a job page with live progress.

Who may do what: submitting or cancelling a job of a site needs ``operator`` on that site,
a fleet-wide job (no site) the hub's admin; reading needs ``viewer``. The page of a running
job reloads itself (``<meta http-equiv=refresh>``, no script) until the job ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_sync.access import Principal, client_ip
from cloud_sync.errors import ApiError, HubFault
from cloud_sync.jobs.charts import charts_for
from cloud_sync.jobs.lifecycle import JobState
from cloud_sync.jobs.store import JobRow, JobStore
from cloud_sync.jobs.types import JobError, JobRefused, JobTypes
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import (
    MAX_INT64,
    body_doc,
    form_body,
    invalid_request,
    json_body,
    links_doc,
    model_schema,
)
from cloud_sync.web.access_views import page_principal

__all__ = ["Dispatch", "JobOrder", "jobs_router"]

Dispatch = Callable[[int], Awaitable[None]]  # hands a stored job to the queue
JobId = Annotated[int, PathParam(ge=1, le=MAX_INT64)]
_TEMPLATES = Path(__file__).resolve().parent.parent / "web" / "templates"
_SITE = r"^[\w .:@-]+$"
_JOB = {"job_id": "$response.body#/id"}
# a queued job is read and cancelled next (stateful fuzzing follows the links)
_JOB_LINKS = links_doc(
    201,
    {
        "GetJob": {"operationId": "getJob", "parameters": _JOB},
        "CancelJob": {"operationId": "cancelJob", "parameters": _JOB},
    },
)


class JobOrder(BaseModel):
    """Body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    site: str | None = Field(default=None, min_length=1, max_length=128, pattern=_SITE)


def _may_see(who: Principal, job: JobRow) -> bool:
    return who.superuser or (job.site is not None and who.can(job.site, "viewer"))


def jobs_router(deps: HubDeps, store: JobStore, types: JobTypes, dispatch: Dispatch) -> APIRouter:
    router = APIRouter()
    access, settings = deps.access, deps.settings
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    templates.env.filters["ns_utc"] = lambda ns: time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9)
    )

    def may_manage(request: Request, site: str | None, csrf: str | None = None) -> Principal:
        who = access.require(request, site, "operator" if site else "admin", csrf=csrf)
        if site is None and not who.superuser:
            raise ApiError(403, "forbidden", "a fleet-wide job (no site) needs the hub's admin")
        return who

    def reader(request: Request) -> Principal:
        if settings.open_reads:
            return access.principal(request) or Principal("anonymous", superuser=True)
        return access.require(request, None, "viewer")

    def visible_job(who: Principal, job_id: int) -> JobRow:
        job = store.get(job_id)
        if job is None or not _may_see(who, job):
            raise ApiError(404, "unknown_job", f"no job {job_id}")
        return job

    async def submit(order: JobOrder, who: Principal, ip: str) -> JobRow:
        try:
            types.validate(order.type, order.params)
        except JobRefused as err:
            raise ApiError(422, err.code, err.detail) from err
        try:
            job = store.submit(order.type, order.params, order.site, who.name)
        except ValueError as err:
            raise ApiError(413, "too_large", str(err)) from err
        detail = {"type": order.type, "site": order.site}
        access.audit(who.name, "job.submit", str(job.id), detail, ip)
        try:
            await dispatch(job.id)
        except JobError as err:
            # stored but not queued: say so in the row, nothing runs half-submitted
            store.fail(job.id, f"not queued: {err}")
            raise HubFault(503, "queue_unavailable", str(err)) from err
        got = store.get(job.id)
        assert got is not None
        return got

    @router.post(
        "/v1/jobs",
        status_code=201,
        openapi_extra={**body_doc(model_schema(JobOrder)), **_JOB_LINKS},
    )
    async def post_job(request: Request) -> dict[str, Any]:
        """Queue a job (operator of its site; the hub admin for a fleet-wide job)."""
        order = await json_body(request, JobOrder, settings.limits.max_json_bytes)
        job = await submit(order, may_manage(request, order.site), client_ip(request))
        return job.as_json()

    @router.get("/v1/jobs")
    def list_jobs(
        request: Request,
        state: JobState | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        who = reader(request)
        rows = store.recent(states=(state,) if state else (), limit=limit)
        return {"jobs": [j.as_json() for j in rows if _may_see(who, j)]}

    @router.get("/v1/jobs/types")
    def job_types(request: Request) -> dict[str, Any]:
        reader(request)
        return {
            "types": {
                name: {"summary": t.summary, "params": t.params.model_json_schema()}
                for name, t in sorted(types.types.items())
            }
        }

    @router.get("/v1/jobs/{job_id}", operation_id="getJob")
    def get_job(job_id: JobId, request: Request) -> dict[str, Any]:
        job = visible_job(reader(request), job_id)
        return {**job.as_json(), "logs": store.logs(job_id)}

    @router.post("/v1/jobs/{job_id}/cancel", operation_id="cancelJob")
    def cancel_job(job_id: JobId, request: Request) -> dict[str, Any]:
        job = store.get(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", f"no job {job_id}")
        who = may_manage(request, job.site)  # checks the CSRF token of a browser session
        if job.done:
            raise ApiError(409, "job_finished", f"job {job_id} is {job.state.value} already")
        after = store.cancel(job_id)
        access.audit(who.name, "job.cancel", str(job_id), {}, client_ip(request))
        assert after is not None
        return after.as_json()

    # pages -------------------------------------------------------------------------------------
    @router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request) -> Response:
        who = page_principal(request, deps)
        if isinstance(who, Response):
            return who
        rows = [j for j in store.recent(limit=200) if _may_see(who, j)]
        return templates.TemplateResponse(
            request,
            "jobs.html",
            {"jobs": rows, "who": who, "types": sorted(types.types), "csrf": who.csrf or ""},
        )

    @router.post("/jobs", include_in_schema=False)
    async def submit_form(request: Request) -> Response:
        form = await form_body(
            request,
            settings.limits.max_json_bytes,  # params is a JSON object, as in the API
            {"type": 64, "params": 64 << 10, "site": 128, "csrf": 64},
            optional={"params": "{}", "site": "", "csrf": ""},
        )
        type_, params, site, csrf = form["type"], form["params"], form["site"], form["csrf"]
        try:
            doc = json.loads(params or "{}")
        except ValueError as err:
            raise ApiError(422, "invalid_params", f"params is not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise ApiError(422, "invalid_params", "params must be a JSON object")
        try:
            order = JobOrder(type=type_, params=doc, site=site or None)
        except ValidationError as err:
            raise invalid_request(err) from err
        who = may_manage(request, order.site, csrf)
        job = await submit(order, who, client_ip(request))
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: JobId, request: Request) -> Response:
        who = page_principal(request, deps)
        if isinstance(who, Response):
            return who
        job = visible_job(who, job_id)
        return templates.TemplateResponse(
            request,
            "job.html",
            {
                "job": job,
                "logs": store.logs(job_id),
                "result": json.dumps(job.result, indent=2) if job.result else None,
                "params": json.dumps(job.params, indent=2),
                "charts": charts_for(job),
                "who": who,
            },
        )

    return router
