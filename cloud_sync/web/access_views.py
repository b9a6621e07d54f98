"""Login, logout and the forms of the web view (the operator API is cloud_sync/routes).

Forms are protected against CSRF twice: the session cookie is SameSite=Strict, and every
state-changing form carries a token the server checks (the login form: a double-submit
token in a cookie and a field; forms after login: the session's own CSRF token).
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cloud_sync.access import SESSION_COOKIE, SESSION_NS, Principal, client_ip
from cloud_sync.enroll import revoke
from cloud_sync.errors import ApiError
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import form_body, visible_device

__all__ = ["access_router", "page_principal"]

_TEMPLATES = Path(__file__).parent / "templates"
LOGIN_CSRF_COOKIE = "fo_login_csrf"


def page_principal(request: Request, deps: HubDeps) -> Principal | Response:
    """Who looks at a page; a redirect to /login when nobody is logged in (closed hubs)."""
    who = deps.access.principal(request)
    if who is not None:
        return who
    if deps.settings.open_reads:
        return Principal("anonymous", superuser=True)
    return RedirectResponse("/login", status_code=303)


def access_router(deps: HubDeps) -> APIRouter:
    router = APIRouter()
    access = deps.access
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    # Secure: browsers send the cookies over HTTPS only (a proxy terminates TLS), unless the
    # hub was told it serves plain HTTP on loopback (development, tests)
    secure = not deps.settings.plain_http

    @router.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, failed: int = 0) -> Response:
        token = secrets.token_urlsafe(24)
        page = templates.TemplateResponse(
            request, "login.html", {"csrf": token, "failed": bool(failed)}
        )
        page.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure)
        return page

    form_limit = deps.settings.limits.max_form_bytes

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await form_body(request, form_limit, {"username": 64, "password": 256, "csrf": 64})
        username, password, csrf = form["username"], form["password"], form["csrf"]
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), csrf.encode()):
            raise ApiError(403, "csrf", "missing or wrong CSRF token: reload the login page")
        ip = client_ip(request)
        try:
            # scrypt takes ~50 ms: off the event loop, which serves the uploads
            sid, _ = await run_in_threadpool(access.login, username, password, ip)
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
    async def logout(request: Request) -> Response:
        csrf = (await form_body(request, form_limit, {"csrf": 64}))["csrf"]
        who = access.principal(request)
        if who is not None:
            access.check_csrf(who, csrf)
            access.logout(request.cookies.get(SESSION_COOKIE, ""))
        page = RedirectResponse("/login", status_code=303)
        page.delete_cookie(SESSION_COOKIE)
        return page

    @router.post("/devices/{utid}/revoke", include_in_schema=False)
    async def revoke_form(utid: str, request: Request) -> Response:
        csrf = (await form_body(request, form_limit, {"csrf": 64}))["csrf"]
        device, who = visible_device(deps, request, utid, "operator", csrf=csrf)
        assert who is not None  # an operator role was asked for: there is a principal
        revoke(deps.store, utid)
        access.audit(
            who.name, "device.revoke", utid, {"site": device.site, "via": "web"}, client_ip(request)
        )
        return RedirectResponse(f"/devices/{utid}", status_code=303)

    return router
