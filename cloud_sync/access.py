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
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy import Engine, delete, insert, select, update

from cloud_sync.errors import ApiError
from cloud_sync.storage.tables import api_keys, audit_log, grants, operators, sessions

__all__ = ["ROLES", "Access", "Principal"]

ROLES = ("viewer", "operator", "admin")
SESSION_COOKIE = "fo_session"
SESSION_NS = 8 * 3600 * 10**9
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def _sha(data: str) -> bytes:
    return hashlib.sha256(data.encode()).digest()


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

    # operators -------------------------------------------------------------------------------
    def create_operator(
        self, username: str, password: str, roles: dict[str, str], actor: str
    ) -> None:
        if len(password) < 12:
            raise ApiError(422, "invalid_request", "password: at least 12 characters")
        for site, role in roles.items():
            if role not in ROLES:
                raise ApiError(422, "invalid_request", f"roles.{site}: one of {', '.join(ROLES)}")
        salt = secrets.token_bytes(16)
        with self.engine.begin() as conn:
            if conn.execute(
                select(operators.c.username).where(operators.c.username == username)
            ).first():
                raise ApiError(409, "operator_exists", f"operator {username!r} exists")
            conn.execute(
                insert(operators).values(
                    username=username, salt=salt, password_scrypt=_scrypt(password, salt),
                    created_ns=self.now_ns(),
                )
            )  # fmt: skip
            for site, role in roles.items():
                conn.execute(insert(grants).values(username=username, site=site, role=role))
        self.audit(actor, "operator.create", username, {"roles": roles})

    def create_api_key(self, username: str, actor: str) -> str:
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if not conn.execute(
                select(operators.c.username).where(operators.c.username == username)
            ).first():
                raise ApiError(404, "unknown_operator", f"no operator {username!r}")
            conn.execute(
                insert(api_keys).values(
                    key_id=key_id, username=username, secret_sha256=_sha(secret),
                    created_ns=self.now_ns(), revoked=False,
                )
            )  # fmt: skip
        self.audit(actor, "api_key.create", username, {"key_id": key_id})
        return f"fo-key-{key_id}.{secret}"

    def _roles(self, username: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(grants).where(grants.c.username == username)).all()
        return {r.site: r.role for r in rows}

    # sessions ----------------------------------------------------------------------------------
    def login(self, username: str, password: str, ip: str) -> tuple[str, str]:
        """(session id, CSRF token); a wrong name or password is one answer, audited."""
        with self.engine.connect() as conn:
            row = conn.execute(select(operators).where(operators.c.username == username)).first()
        # scrypt runs either way, so a wrong name takes as long as a wrong password
        salt = row.salt if row is not None else b"\0" * 16
        ok = hmac.compare_digest(_scrypt(password, salt), row.password_scrypt if row else b"")
        if row is None or not ok:
            self.audit(username, "login.failed", username, {}, ip)
            raise ApiError(401, "bad_login", "unknown operator or wrong password")
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = self.now_ns()
        with self.engine.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_ns < now))
            conn.execute(
                insert(sessions).values(
                    sid_sha256=_sha(sid), username=username, csrf=csrf, expires_ns=now + SESSION_NS
                )
            )
        self.audit(username, "login", username, {}, ip)
        return sid, csrf

    def logout(self, sid: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.sid_sha256 == _sha(sid)))

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
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None or row.revoked or not hmac.compare_digest(_sha(secret), row.secret_sha256):
            raise ApiError(401, "unauthorized", "unknown or revoked API key")
        return Principal(row.username, self._roles(row.username))

    def _from_session(self, sid: str) -> Principal | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(sessions).where(sessions.c.sid_sha256 == _sha(sid))).first()
        if row is None or row.expires_ns < self.now_ns():
            return None
        return Principal(row.username, self._roles(row.username), csrf=row.csrf)

    def require(self, request: Request, site: str | None, role: str) -> Principal:
        """The principal, if it has ``role`` on ``site`` (any site when None); else 401/403."""
        who = self.principal(request)
        if who is None:
            raise ApiError(401, "unauthorized", "log in, or send an API key: Bearer fo-key-...")
        allowed = who.superuser or (
            who.can(site, role) if site is not None else bool(who.sites(role))
        )
        if not allowed:
            raise ApiError(403, "forbidden", f"{who.name} is not {role} of site {site or 'any'}")
        return who

    @staticmethod
    def check_csrf(who: Principal, submitted: str | None) -> None:
        """Browser forms must echo the session's CSRF token (bearer clients have none)."""
        if who.csrf is not None and not (
            submitted and hmac.compare_digest(submitted.encode(), who.csrf.encode())
        ):
            raise ApiError(403, "csrf", "missing or wrong CSRF token: reload the page")

    # audit -----------------------------------------------------------------------------------
    def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], ip: str = ""
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(audit_log).values(
                    ts_ns=self.now_ns(), actor=actor[:128], action=action, target=target[:200],
                    detail=json.dumps(detail, sort_keys=True)[:4000], ip=ip[:64],
                )
            )  # fmt: skip

    def audit_entries(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
            ).all()
        return [
            {
                "id": r.id, "ts_ns": r.ts_ns, "actor": r.actor, "action": r.action,
                "target": r.target, "detail": json.loads(r.detail), "ip": r.ip,
            }
            for r in rows
        ]  # fmt: skip

    def revoke_api_key(self, key_id: str, actor: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(revoked=True))
        self.audit(actor, "api_key.revoke", key_id, {})
