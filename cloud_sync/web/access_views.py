"""Login, logout and the forms of the web view; the operator, API-key and audit API.

Forms are protected against CSRF twice: the session cookie is SameSite=Strict, and every
state-changing form carries a token the server checks (the login form: a double-submit
token in a cookie and a field; forms after login: the session's own CSRF token).
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from cloud_sync.access import SESSION_COOKIE, SESSION_NS, Access, Principal
from cloud_sync.errors import ApiError
from cloud_sync.settings import HubSettings

__all__ = ["access_router", "page_principal"]

_TEMPLATES = Path(__file__).parent / "templates"
LOGIN_CSRF_COOKIE = "fo_login_csrf"
_NAME = r"^[a-z][a-z0-9_.-]{1,63}$"


class OperatorOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=_NAME)
    password: str = Field(min_length=12, max_length=256)
    roles: dict[str, str] = Field(default_factory=dict, max_length=256)


def page_principal(request: Request, settings: HubSettings) -> Principal | Response:
    """Who looks at a page; a redirect to /login when nobody is logged in (closed hubs)."""
    access: Access = request.app.state.access
    who = access.principal(request)
    if who is not None:
        return who
    if settings.open_reads:
        return Principal("anonymous", superuser=True)
    return RedirectResponse("/login", status_code=303)


def _superuser(access: Access, request: Request) -> Principal:
    who = access.require(request, None, "admin")
    if not who.superuser:
        raise ApiError(403, "forbidden", "only the hub's admin token manages operators")
    return who


def access_router(access: Access, settings: HubSettings) -> APIRouter:
    router = APIRouter()
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    secure = False  # behind TLS termination, set by the proxy; the cookie is HttpOnly + Strict

    @router.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, failed: int = 0) -> Response:
        token = secrets.token_urlsafe(24)
        page = templates.TemplateResponse(
            request, "login.html", {"csrf": token, "failed": bool(failed)}
        )
        page.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure)
        return page

    @router.post("/login", include_in_schema=False)
    def login(
        request: Request,
        username: str = Form(max_length=64),
        password: str = Form(max_length=256),
        csrf: str = Form(max_length=64),
    ) -> Response:
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), csrf.encode()):
            raise ApiError(403, "csrf", "missing or wrong CSRF token: reload the login page")
        ip = request.client.host if request.client else ""
        try:
            sid, _ = access.login(username, password, ip)
        except ApiError:
            return RedirectResponse("/login?failed=1", status_code=303)
        page = RedirectResponse("/", status_code=303)
        page.set_cookie(
            SESSION_COOKIE, sid, max_age=SESSION_NS // 10**9, httponly=True, samesite="strict",
            secure=secure,
        )  # fmt: skip
        page.delete_cookie(LOGIN_CSRF_COOKIE)
        return page

    @router.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form(max_length=64)) -> Response:
        who = access.principal(request)
        if who is not None:
            access.check_csrf(who, csrf)
            access.logout(request.cookies.get(SESSION_COOKIE, ""))
        page = RedirectResponse("/login", status_code=303)
        page.delete_cookie(SESSION_COOKIE)
        return page

    @router.post("/devices/{utid}/revoke", include_in_schema=False)
    def revoke_form(utid: str, request: Request, csrf: str = Form(max_length=64)) -> Response:
        from cloud_sync.enroll import revoke  # noqa: PLC0415 - shared with the API route

        store = request.app.state.store
        device = store.device(utid)
        if device is None:
            raise ApiError(404, "unknown_device", f"no device {utid}")
        who = access.require(request, device.site, "operator")
        access.check_csrf(who, csrf)
        revoke(store, utid)
        access.audit(who.name, "device.revoke", utid, {"site": device.site, "via": "web"})
        return RedirectResponse(f"/devices/{utid}", status_code=303)

    @router.post("/v1/operators", status_code=201)
    def create_operator(order: OperatorOrder, request: Request) -> dict[str, Any]:
        """Hub admin: an operator with roles per site (viewer, operator, admin)."""
        who = _superuser(access, request)
        access.create_operator(order.username, order.password, order.roles, who.name)
        return {"username": order.username, "roles": order.roles}

    @router.post("/v1/operators/{username}/api-keys", status_code=201)
    def create_api_key(username: str, request: Request) -> dict[str, Any]:
        """Hub admin: an API key for an operator (shown once; only its hash is kept)."""
        who = _superuser(access, request)
        return {"username": username, "api_key": access.create_api_key(username, who.name)}

    @router.get("/v1/audit")
    def audit(request: Request, limit: int = 200) -> dict[str, Any]:
        """Hub admin: the newest audit entries (every write, login and refusal of a login)."""
        _superuser(access, request)
        return {"entries": access.audit_entries(max(1, min(limit, 1000)))}

    return router
