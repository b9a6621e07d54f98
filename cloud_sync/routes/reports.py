"""What the fleet reported, per site: proof reports (JSON, PDF), usage and signed monthly
statements, billing-event deliveries, the anomaly list and the list of silent sources.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cloud_sync.access import client_ip
from cloud_sync.errors import ApiError
from cloud_sync.metering import parse_month
from cloud_sync.reports import parse_period, render_pdf, sign, site_report
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import (
    MONTH_PATTERN,
    UTID_PATTERN,
    Month,
    Site,
    links_doc,
    may_read,
    readable_sites,
)

__all__ = ["router"]


# a month's usage, then closing it, then its statement (stateful fuzzing follows the links)
_MONTH = {"site": "$response.body#/site", "month": "$response.body#/month"}
_USAGE_LINKS = links_doc(200, {"Close": {"operationId": "closeMonth", "parameters": _MONTH}})
_CLOSE_LINKS = links_doc(
    200, {"Statement": {"operationId": "monthStatement", "parameters": _MONTH}}
)


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()
    access, metering, webhooks = deps.access, deps.metering, deps.webhooks

    @api.get("/v1/sites/{site}/report", response_model=None, operation_id="siteReport")
    def report(
        site: Site,
        request: Request,
        start: str = Query(alias="from", max_length=40),
        end: str = Query(alias="to", max_length=40),
        fmt: str = Query(default="json", alias="format", pattern="^(json|pdf|bundle)$"),
    ) -> Response:
        """The site's proof report for [from, to): the facts as signed JSON (the signature in
        ``x-factoryops-report-signature``, base64 COSE_Sign1 with the payload detached), the
        same facts as a PDF, or a zip of both with the signature (``bundle``)."""
        may_read(deps, request, site)
        period = parse_period(start, end)
        facts = site_report(deps.store, deps.log, site, *period, deps.now_ns())
        signed = sign(facts, deps.log.signer)
        name = f"factoryops-{site}-{period[0]:%Y%m%d}-{period[1]:%Y%m%d}"
        headers = {
            "x-factoryops-report-sha256": signed.sha256,
            "x-factoryops-report-signature": base64.b64encode(signed.cose).decode(),
        }
        if fmt == "json":
            return Response(signed.json, media_type="application/json", headers=headers)
        pdf = render_pdf(facts, signed.sha256)
        if fmt == "pdf":
            disposition = f'attachment; filename="{name}.pdf"'
            return Response(pdf, media_type="application/pdf",
                            headers={**headers, "content-disposition": disposition})  # fmt: skip
        disposition = f'attachment; filename="{name}.zip"'
        return Response(signed.bundle(pdf), media_type="application/zip",
                        headers={**headers, "content-disposition": disposition})  # fmt: skip

    @api.get("/v1/sites/{site}/usage", operation_id="siteUsage", openapi_extra=_USAGE_LINKS)
    def usage(
        site: Site,
        request: Request,
        month: str = Query(pattern=MONTH_PATTERN, examples=["2026-11"]),
    ) -> dict[str, Any]:
        """Accepted proofs and readings per UTC day of ``month`` (the basis of billing)."""
        may_read(deps, request, site)
        days = metering.usage(site, *parse_month(month))
        return {
            "site": site,
            "month": month,
            "days": days,
            "proofs": sum(d["proofs"] for d in days),
            "readings": sum(d["readings"] for d in days),
        }

    @api.post(
        "/v1/sites/{site}/usage/{month}/close",
        operation_id="closeMonth",
        openapi_extra=_CLOSE_LINKS,
    )
    def close_month(site: Site, month: Month, request: Request) -> dict[str, Any]:
        """Site admin: the month's signed usage statement (once); a billing event."""
        who = access.require(request, site, "admin")
        note, created = metering.close_month(site, month)
        if created:
            access.audit(who.name, "usage.close", f"{site}/{month}", {}, client_ip(request))
            webhooks.emit("usage.statement", {"site": site, "month": month, "statement": note})
        return {"site": site, "month": month, "statement": note, "created": created}

    @api.get("/v1/sites/{site}/usage/{month}/statement", operation_id="monthStatement")
    def statement(site: Site, month: Month, request: Request) -> dict[str, str]:
        """A closed month's statement: a signed note, checkable with the hub's log key."""
        may_read(deps, request, site)
        parse_month(month)
        note = metering.statement(site, month)
        if note is None:
            raise ApiError(404, "no_statement", f"month {month} of {site} is not closed")
        return {"site": site, "month": month, "statement": note}

    @api.get("/v1/webhooks/deliveries")
    def deliveries(request: Request) -> dict[str, Any]:
        """Hub admin: every billing event and its delivery state."""
        access.require_superuser(request, "sees deliveries")
        return {"deliveries": webhooks.deliveries()}

    @api.get("/v1/anomalies")
    def anomaly_list(
        request: Request,
        utid: str | None = Query(default=None, pattern=UTID_PATTERN),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Newest first: windows whose signed micro-proof reports anomalous rows."""
        return {"anomalies": readable(request, deps.anomalies.recent(utid=utid, limit=limit))}

    @api.get("/v1/source-gaps")
    def source_gap_list(
        request: Request,
        utid: str | None = Query(default=None, max_length=69),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Newest first: sources that the accepted proofs state were silent (key 16)."""
        return {"source_gaps": readable(request, deps.silences.recent(utid=utid, limit=limit))}

    def readable(request: Request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows (each naming a ``utid``) of devices on sites the caller may read."""
        sites = readable_sites(deps, request)
        if sites is None:
            return rows
        site_of = {d.utid: d.site for d in deps.store.list_devices()}
        return [r for r in rows if site_of.get(r["utid"]) in sites]

    return api
