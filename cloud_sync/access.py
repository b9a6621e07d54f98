"""Who may do what on the hub: operators with per-site roles, API keys, sessions, audit.

Principals:

- the hub's admin bearer token: every right on every site (bootstrap and automation);
- an operator's API key, ``Authorization: Bearer fo-key-<id>.<secret>``;
- an operator's browser session (``fo_session`` cookie, HttpOnly, SameSite=Strict), made
  by the login form; state-changing forms carry a per-session CSRF token as well.

Roles per site, each including the ones before: ``viewer`` (read), ``operator`` (revoke
devices, download reports), ``admin`` (issue enrollment tokens, manage operators).
Devices never get a principal here: their tokens only work on the device API.

Secrets are stored as hashes only: passwords with scrypt (N=2^14, r=8, p=1, 16-byte salt),
API keys and session ids with SHA-256 (they are long random values). Every write goes
through ``audit``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy import Engine

from cloud_sync.errors import ApiError
from cloud_sync.names import OPERATOR_NAME, SITE_NAME, check_name
from cloud_sync.storage.access import AccessRepo

__all__ = ["ROLES", "Access", "Principal", "client_ip"]

ROLES = ("viewer", "operator", "admin")
SESSION_COOKIE = "fo_session"
SESSION_NS = 8 * 3600 * 10**9
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 §9.2.1: they change nothing
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def _sha(data: str) -> bytes:
    return hashlib.sha256(data.encode()).digest()


def client_ip(request: Request) -> str:
    """The peer's address as the server saw it (behind a proxy: the proxy's, unless
    uvicorn is told to trust its forwarded headers)."""
    return request.client.host if request.client else ""


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, maxmem=64 << 20, **_SCRYPT)


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: dict[str, str] = field(default_factory=dict)  # site -> role
    superuser: bool = False
    csrf: str | None = None  # set for browser sessions

    def can(self, site: str, role: str) -> bool:
        if self.superuser:
            return True
        have = self.roles.get(site)
        return have is not None and ROLES.index(have) >= ROLES.index(role)

    def sites(self, role: str = "viewer") -> set[str] | None:
        """Sites where the principal has ``role``; None means all of them."""
        if self.superuser:
            return None
        return {s for s in self.roles if self.can(s, role)}


@dataclass
class Access:
    engine: Engine
    admin_token: str
    now_ns: Any

    @property
    def _repo(self) -> AccessRepo:
        return AccessRepo(self.engine)

    # operators -------------------------------------------------------------------------------
    def create_operator(
        self, username: str, password: str, roles: dict[str, str], actor: str, ip: str = ""
    ) -> None:
        """One name rule for every way in (API, CLI): OPERATOR_NAME, sites SITE_NAME."""
        check_name(OPERATOR_NAME, username, "username")
        if len(password) < 12:
            raise ApiError(422, "invalid_request", "password: at least 12 characters")
        for site, role in roles.items():
            check_name(SITE_NAME, site, "roles (a site)")
            if role not in ROLES:
                raise ApiError(422, "invalid_request", f"roles.{site}: one of {', '.join(ROLES)}")
        salt = secrets.token_bytes(16)
        if not self._repo.add_operator(
            username, salt, _scrypt(password, salt), roles, self.now_ns()
        ):
            raise ApiError(409, "operator_exists", f"operator {username!r} exists")
        self.audit(actor, "operator.create", username, {"roles": roles}, ip)

    def create_api_key(self, username: str, actor: str, ip: str = "") -> str:
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        if not self._repo.add_api_key(key_id, username, _sha(secret), self.now_ns()):
            raise ApiError(404, "unknown_operator", f"no operator {username!r}")
        self.audit(actor, "api_key.create", username, {"key_id": key_id}, ip)
        return f"fo-key-{key_id}.{secret}"

    # sessions ----------------------------------------------------------------------------------
    def login(self, username: str, password: str, ip: str) -> tuple[str, str]:
        """(session id, CSRF token); a wrong name or password is one answer, audited."""
        row = self._repo.operator(username)
        # scrypt runs either way, so a wrong name takes as long as a wrong password
        salt = row.salt if row is not None else b"\0" * 16
        ok = hmac.compare_digest(_scrypt(password, salt), row.password_scrypt if row else b"")
        if row is None or not ok:
            self.audit(username, "login.failed", username, {}, ip)
            raise ApiError(401, "bad_login", "unknown operator or wrong password")
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = self.now_ns()
        self._repo.add_session(_sha(sid), username, csrf, now, now + SESSION_NS)
        self.audit(username, "login", username, {}, ip)
        return sid, csrf

    def logout(self, sid: str) -> None:
        self._repo.drop_session(_sha(sid))

    # who is asking ---------------------------------------------------------------------------
    def principal(self, request: Request) -> Principal | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            if hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return Principal("admin", superuser=True)
            if token.startswith("fo-key-"):
                return self._from_api_key(token)
            return None  # a device token: not an operator
        sid = request.cookies.get(SESSION_COOKIE)
        return self._from_session(sid) if sid else None

    def _from_api_key(self, token: str) -> Principal:
        key_id, _, secret = token.removeprefix("fo-key-").partition(".")
        row = self._repo.api_key(key_id)
        if row is None or row.revoked or not hmac.compare_digest(_sha(secret), row.secret_sha256):
            raise ApiError(401, "unauthorized", "unknown or revoked API key")
        return Principal(row.username, self._repo.roles(row.username))

    def _from_session(self, sid: str) -> Principal | None:
        row = self._repo.session(_sha(sid))
        if row is None or row.expires_ns < self.now_ns():
            return None
        return Principal(row.username, self._repo.roles(row.username), csrf=row.csrf)

    def require(
        self, request: Request, site: str | None, role: str, *, csrf: str | None = None
    ) -> Principal:
        """The principal, if it has ``role`` on ``site`` (any site when None); else 401/403.

        A request that may change state (any method but GET, HEAD, OPTIONS) from a browser
        session must carry the session's CSRF token, whatever its content type: ``csrf``
        (a form field) or the ``X-CSRF-Token`` header.
        """
        who = self.principal(request)
        if who is None:
            raise ApiError(401, "unauthorized", "log in, or send an API key: Bearer fo-key-...")
        if request.method not in SAFE_METHODS:
            self.check_csrf(who, csrf if csrf is not None else request.headers.get("x-csrf-token"))
        allowed = who.superuser or (
            who.can(site, role) if site is not None else bool(who.sites(role))
        )
        if not allowed:
            raise ApiError(403, "forbidden", f"{who.name} is not {role} of site {site or 'any'}")
        return who

    def require_superuser(self, request: Request, what: str) -> Principal:
        """The hub's admin token (401 without a principal, 403 for an operator)."""
        who = self.require(request, None, "admin")
        if not who.superuser:
            raise ApiError(403, "forbidden", f"only the hub's admin token {what}")
        return who

    def require_admin_token(self, request: Request) -> None:
        """401 unless the request carries the hub's own admin bearer token."""
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.admin_token}".encode()):
            raise ApiError(401, "unauthorized", "this call needs the hub's admin bearer token")

    @staticmethod
    def check_csrf(who: Principal, submitted: str | None) -> None:
        """Browser forms must echo the session's CSRF token (bearer clients have none)."""
        if who.csrf is not None and not (
            submitted and hmac.compare_digest(submitted.encode(), who.csrf.encode())
        ):
            raise ApiError(403, "csrf", "missing or wrong CSRF token: reload the page")

    # audit -----------------------------------------------------------------------------------
    def audit(self, actor: str, action: str, target: str, detail: dict[str, Any], ip: str) -> None:
        """One audit row; ``ip`` is the client's address (``client_ip``), "" for the CLI."""
        self._repo.add_audit(self.now_ns(), actor, action, target, detail, ip)

    def audit_entries(self, limit: int = 200) -> list[dict[str, Any]]:
        return self._repo.audit_entries(limit)

    def revoke_api_key(self, key_id: str, actor: str, ip: str) -> None:
        self._repo.revoke_api_key(key_id)
        self.audit(actor, "api_key.revoke", key_id, {}, ip)
