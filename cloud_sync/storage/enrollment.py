"""Repositories of enrolment and device authentication: one-time enrollment tokens,
enrollment sessions, device challenges and device bearer tokens (hashes only).

The rules (what expires, what a token buys) live in ``cloud_sync.enroll``; this module only
reads and writes rows, each write one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from cloud_sync.storage.tables import (
    device_challenges,
    device_tokens,
    enrollment_tokens,
    enrollments,
)

__all__ = ["DeviceTokenRepo", "EnrollmentRepo"]


@dataclass(frozen=True, slots=True)
class EnrollmentRepo:
    engine: Engine

    def add_token(self, token_sha256: bytes, site: str, created_ns: int, expires_ns: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(enrollment_tokens).values(
                    token_sha256=token_sha256, site=site, created_ns=created_ns,
                    expires_ns=expires_ns,
                )
            )  # fmt: skip

    def token(self, token_sha256: bytes) -> Any:
        """The token's row (``site``, ``expires_ns``, ``used_ns``, ...) or None."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(enrollment_tokens).where(enrollment_tokens.c.token_sha256 == token_sha256)
            ).first()

    def start_session(self, now_ns: int, **values: Any) -> None:
        """A pending enrollment session (pending sessions expired by ``now_ns`` are dropped;
        finished ones are kept: they name the AK a key rotation is certified by, ADR 0038)."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(enrollments).where(
                    enrollments.c.expires_ns < now_ns, enrollments.c.state == "pending"
                )
            )
            conn.execute(insert(enrollments).values(state="pending", **values))

    def enrolled_ak(self, utid: str) -> bytes | None:
        """The AK (TPM2B_PUBLIC) whose TPM enrollment of ``utid`` finished, if any."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(enrollments.c.ak_public)
                .where(enrollments.c.utid == utid, enrollments.c.state == "done")
                .limit(1)
            ).scalar_one_or_none()

    def session(self, session: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(enrollments).where(enrollments.c.session == session)).first()

    def finish(
        self, session: str, token_sha256: bytes, utid: str, pcrs_json: str, now_ns: int
    ) -> str | None:
        """Burn the token and close the session in one transaction; the token's site, or None
        when the token was burnt already (by a concurrent finish)."""
        with self.engine.begin() as conn:
            burnt = conn.execute(
                update(enrollment_tokens)
                .where(
                    enrollment_tokens.c.token_sha256 == token_sha256,
                    enrollment_tokens.c.used_ns.is_(None),
                )
                .values(used_ns=now_ns, used_by=utid)
            )
            if burnt.rowcount != 1:
                return None
            conn.execute(
                update(enrollments)
                .where(enrollments.c.session == session)
                .values(state="done", utid=utid, pcrs=pcrs_json)
            )
            return str(
                conn.execute(
                    select(enrollment_tokens.c.site).where(
                        enrollment_tokens.c.token_sha256 == token_sha256
                    )
                ).scalar_one()
            )

    def resume(self, session: str, token_sha256: bytes, utid: str, pcrs_json: str) -> str | None:
        """Close a session that enrolled ``utid`` again with the token that enrolled it
        before; the token's site, or None when the token enrolled another key."""
        with self.engine.begin() as conn:
            site = conn.execute(
                select(enrollment_tokens.c.site).where(
                    enrollment_tokens.c.token_sha256 == token_sha256,
                    enrollment_tokens.c.used_by == utid,
                )
            ).scalar_one_or_none()
            if site is None:
                return None
            conn.execute(
                update(enrollments)
                .where(enrollments.c.session == session)
                .values(state="done", utid=utid, pcrs=pcrs_json)
            )
            return str(site)


@dataclass(frozen=True, slots=True)
class DeviceTokenRepo:
    engine: Engine

    def add_challenge(
        self, challenge_sha256: bytes, utid: str, now_ns: int, expires_ns: int
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(device_challenges).where(device_challenges.c.expires_ns < now_ns))
            conn.execute(
                insert(device_challenges).values(
                    challenge_sha256=challenge_sha256, utid=utid, expires_ns=expires_ns,
                    used=False,
                )
            )  # fmt: skip

    def trade_challenge(
        self, challenge_sha256: bytes, utid: str, token_sha256: bytes, now_ns: int, expires_ns: int
    ) -> bool:
        """Use the challenge (once, unexpired) and store the token it buys; False: no such
        usable challenge, and nothing stored."""
        with self.engine.begin() as conn:
            used = conn.execute(  # compare-and-set: a challenge buys one token, once
                update(device_challenges)
                .where(
                    device_challenges.c.challenge_sha256 == challenge_sha256,
                    device_challenges.c.utid == utid,
                    device_challenges.c.used.is_(False),
                    device_challenges.c.expires_ns >= now_ns,
                )
                .values(used=True)
            )
            if used.rowcount != 1:
                return False
            conn.execute(delete(device_tokens).where(device_tokens.c.expires_ns < now_ns))
            conn.execute(
                insert(device_tokens).values(
                    token_sha256=token_sha256, utid=utid, expires_ns=expires_ns
                )
            )
        return True

    def token(self, token_sha256: bytes) -> tuple[str, int] | None:
        """(utid, expires_ns) of a device token."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(device_tokens.c.utid, device_tokens.c.expires_ns).where(
                    device_tokens.c.token_sha256 == token_sha256
                )
            ).first()
        return None if row is None else (str(row.utid), int(row.expires_ns))

    def drop_tokens(self, utid: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(device_tokens).where(device_tokens.c.utid == utid))
