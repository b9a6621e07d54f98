"""Repository of who may do what: operators, their per-site grants, API keys, browser
sessions and the audit log (secrets as hashes only; ``cloud_sync.access`` owns the rules).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from cloud_sync.storage.tables import api_keys, audit_log, grants, operators, sessions

__all__ = ["AccessRepo"]


@dataclass(frozen=True, slots=True)
class AccessRepo:
    engine: Engine

    # operators and grants ------------------------------------------------------------------
    def add_operator(
        self, username: str, salt: bytes, password_scrypt: bytes, roles: dict[str, str], now: int
    ) -> bool:
        """The operator and their grants in one transaction; False if the name is taken."""
        with self.engine.begin() as conn:
            if conn.execute(
                select(operators.c.username).where(operators.c.username == username)
            ).first():
                return False
            conn.execute(
                insert(operators).values(
                    username=username, salt=salt, password_scrypt=password_scrypt,
                    created_ns=now,
                )
            )  # fmt: skip
            for site, role in roles.items():
                conn.execute(insert(grants).values(username=username, site=site, role=role))
        return True

    def operator(self, username: str) -> Any:
        """The operator's row (``salt``, ``password_scrypt``) or None."""
        with self.engine.connect() as conn:
            return conn.execute(select(operators).where(operators.c.username == username)).first()

    def roles(self, username: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(grants).where(grants.c.username == username)).all()
        return {r.site: r.role for r in rows}

    # API keys ------------------------------------------------------------------------------
    def add_api_key(self, key_id: str, username: str, secret_sha256: bytes, now: int) -> bool:
        """False if there is no such operator (and nothing stored)."""
        with self.engine.begin() as conn:
            if not conn.execute(
                select(operators.c.username).where(operators.c.username == username)
            ).first():
                return False
            conn.execute(
                insert(api_keys).values(
                    key_id=key_id, username=username, secret_sha256=secret_sha256,
                    created_ns=now, revoked=False,
                )
            )  # fmt: skip
        return True

    def api_key(self, key_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()

    def revoke_api_key(self, key_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(revoked=True))

    # sessions ------------------------------------------------------------------------------
    def add_session(
        self, sid_sha256: bytes, username: str, csrf: str, now: int, expires_ns: int
    ) -> None:
        """A browser session (sessions expired by ``now`` are dropped on the way)."""
        with self.engine.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_ns < now))
            conn.execute(
                insert(sessions).values(
                    sid_sha256=sid_sha256, username=username, csrf=csrf, expires_ns=expires_ns
                )
            )

    def session(self, sid_sha256: bytes) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(sessions).where(sessions.c.sid_sha256 == sid_sha256)).first()

    def drop_session(self, sid_sha256: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.sid_sha256 == sid_sha256))

    # audit ---------------------------------------------------------------------------------
    def add_audit(
        self, ts_ns: int, actor: str, action: str, target: str, detail: dict[str, Any], ip: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(audit_log).values(
                    ts_ns=ts_ns, actor=actor[:128], action=action, target=target[:200],
                    detail=json.dumps(detail, sort_keys=True)[:4000], ip=ip[:64],
                )
            )  # fmt: skip

    def audit_entries(self, limit: int) -> list[dict[str, Any]]:
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
