"""Hub settings: where data lives, which keys are accepted, and every request limit.

A frozen dataclass built once at start (``HubSettings.create``) and passed to ``create_app``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cloud_sync.errors import HubError

__all__ = ["HubLimits", "HubSettings"]


@dataclass(frozen=True, slots=True)
class HubLimits:
    """Bounds on what one request may make the hub read or store."""

    max_body_bytes: int = 16 << 20  # 1,000 readings a proof at ~60 B a leaf: 256 proofs fit
    max_decompressed_bytes: int = 64 << 20  # a zstd body may not inflate past this (zip bombs)
    max_proofs_per_request: int = 256
    max_leaves_per_proof: int = 65_536
    max_json_bytes: int = 64 << 10  # device registration and other JSON bodies


@dataclass(frozen=True, slots=True)
class HubSettings:
    data_dir: Path
    db_url: str
    admin_token: str
    allow_software_keys: bool = False
    fleet_name: str = "FactoryOps fleet CA"
    log_origin: str = "factoryops.local/hub-log"  # C2SP checkpoint origin and note key name
    limits: HubLimits = field(default_factory=HubLimits)
    log_key_uri: str | None = None  # pkcs11:... to keep the log key in an HSM; None: a file
    open_reads: bool = False  # True: reads need no login (a demo, a closed plant network)
    webhook_url: str | None = None  # billing events (closed months) are POSTed here
    webhook_secret: str = ""  # HMAC key of the webhook signature (made once, kept 0600)

    @classmethod
    def create(
        cls,
        data_dir: Path,
        *,
        db_url: str | None = None,
        admin_token: str | None = None,
        allow_software_keys: bool = False,
        limits: HubLimits | None = None,
        log_key_uri: str | None = None,
        open_reads: bool = False,
        webhook_url: str | None = None,
    ) -> HubSettings:
        """Settings for ``data_dir``; the admin token is made once and kept there (mode 0600)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            data_dir=data_dir,
            db_url=db_url or f"sqlite:///{data_dir / 'hub.db'}",
            admin_token=admin_token or _load_or_create_token(data_dir / "admin-token"),
            allow_software_keys=allow_software_keys,
            limits=limits or HubLimits(),
            log_key_uri=log_key_uri,
            open_reads=open_reads,
            webhook_url=webhook_url,
            webhook_secret=_load_or_create_token(data_dir / "webhook-secret"),
        )


def _load_or_create_token(path: Path) -> str:
    if path.exists():
        token = path.read_text(encoding="ascii").strip()
        if len(token) < 32:
            raise HubError(f"{path} holds a token shorter than 32 characters", hint=f"rm {path}")
        return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token
