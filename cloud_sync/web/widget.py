"""The partner widget: a device's or a site's live charts, shown through an embed token.

``POST /v1/embed-tokens`` (an operator of the site) makes a token that grants one device or
one site, until a date, to pages of the listed origins only; ``/widget/{token}`` is the page
a partner puts in an ``<iframe>``. The page's CSP ``frame-ancestors`` is the token's origin
list, so a browser refuses to show it inside any other site, and it sends no referrer, so
the token does not leak into the logs of the sites it links to. No operator session is
involved: the token is the whole grant (``cloud_sync/embedtoken.py``).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attestation.durable import write_new
from cloud_sync.access import client_ip
from cloud_sync.embedtoken import BadEmbedToken, EmbedGrant, EmbedLimits, make_token, read_token
from cloud_sync.errors import ApiError
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import (
    SITE_PATTERN,
    UTID_PATTERN,
    body_doc,
    content_security_policy,
    device_or_404,
    json_body,
    links_doc,
    model_schema,
)
from cloud_sync.web.views import charts_of

__all__ = ["EmbedOrder", "embed_key", "widget_router"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"
KEY_FILE = "embed-key"
KEY_BYTES = 32  # HMAC-SHA256 key: the hash's block-size rule of thumb (RFC 2104 §3)


class EmbedOrder(BaseModel):
    """Body of POST /v1/embed-tokens: one device or one site, for how long, framed by whom."""

    model_config = ConfigDict(extra="forbid")
    device: str | None = Field(default=None, pattern=UTID_PATTERN)
    site: str | None = Field(default=None, pattern=SITE_PATTERN)
    ttl_s: int = Field(default=7 * 86_400, ge=60, le=EmbedLimits().max_ttl_s)
    frame_ancestors: list[str] = Field(min_length=1, max_length=EmbedLimits().max_origins)

    @model_validator(mode="after")
    def _one_target(self) -> EmbedOrder:
        if (self.device is None) == (self.site is None):
            raise ValueError("give exactly one of device and site")
        return self


# the page a new token opens (documented, so stateful fuzzing follows the link to it)
_WIDGET_LINKS = links_doc(
    201,
    {"Widget": {"operationId": "embedWidget", "parameters": {"token": "$response.body#/token"}}},
)


def embed_key(data_dir: Path) -> bytes:
    """The hub's embed-token key (made once, 0600; replacing it revokes every token)."""
    path = data_dir / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        # another replica or request may make it first: then use theirs
        with contextlib.suppress(FileExistsError):
            write_new(path, secrets.token_bytes(KEY_BYTES), 0o600)
        return path.read_bytes()


def widget_router(deps: HubDeps) -> APIRouter:
    router = APIRouter()
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    access, store = deps.access, deps.store
    key = embed_key(deps.settings.data_dir)

    @router.post(
        "/v1/embed-tokens",
        status_code=201,
        openapi_extra={**body_doc(model_schema(EmbedOrder)), **_WIDGET_LINKS},
    )
    async def create_embed_token(request: Request) -> dict[str, Any]:
        """An operator of the site: a token for a partner's widget (shown once)."""
        access.require(request, None, "operator")  # strangers get nothing parsed
        order = await json_body(request, EmbedOrder, deps.settings.limits.max_json_bytes)
        site = order.site or device_or_404(store, order.device or "").site
        who = access.require(request, site, "operator")
        scope: Literal["device", "site"] = "device" if order.device else "site"
        target = order.device or site
        try:
            token, grant = make_token(
                key,
                scope,
                target,
                now_s=deps.now_ns() // 10**9,
                ttl_s=order.ttl_s,
                frame_ancestors=order.frame_ancestors,
            )
        except BadEmbedToken as err:
            raise ApiError(422, "invalid_request", str(err)) from err
        detail = {"scope": scope, "id": grant.token_id, "expires": grant.expires_s,
                  "frame_ancestors": list(grant.frame_ancestors)}  # fmt: skip
        access.audit(who.name, "embed_token.create", target, detail, client_ip(request))
        return {"token": token, "url": f"/widget/{token}", **detail}

    def granted(token: str) -> EmbedGrant:
        try:
            return read_token(key, token, now_s=deps.now_ns() // 10**9)
        except BadEmbedToken as err:
            raise ApiError(403, "embed_refused", str(err)) from err

    @router.get("/widget/{token}", response_class=HTMLResponse, operation_id="embedWidget")
    def widget(request: Request, token: str) -> Response:
        grant = granted(token)
        if grant.scope == "device":
            devices = [device_or_404(store, grant.target)]
        else:
            devices = [d for d in store.list_devices() if d.site == grant.target]
        panels = [
            {"device": d, "charts": charts_of(store, d.utid)} for d in devices if not d.revoked
        ]
        page = templates.TemplateResponse(
            request,
            "widget.html",
            {
                "grant": grant,
                "panels": panels,
                "expires": time.strftime("%Y-%m-%d", time.gmtime(grant.expires_s)),
            },
        )
        page.headers["content-security-policy"] = content_security_policy(grant.csp_sources())
        page.headers["referrer-policy"] = "no-referrer"
        page.headers["cache-control"] = "no-store"
        return page

    return router
