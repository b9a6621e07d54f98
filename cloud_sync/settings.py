"""Hub settings: where data lives, which keys are accepted, and every request limit.

A frozen dataclass built once at start (``HubSettings.create``) and passed to ``create_app``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from attestation.durable import write_atomically
from attestation.microproof import MICROPROOF_LIMITS, ProofLimits
from cloud_sync.errors import HubError

__all__ = ["COMMIT_GATHER_S", "HubLimits", "HubSettings"]


@dataclass(frozen=True, slots=True)
class HubLimits:
    """Bounds on what one request may make the hub read or store."""

    max_body_bytes: int = 16 << 20  # 1,000 readings a proof at ~60 B a leaf: 256 proofs fit
    max_decompressed_bytes: int = 64 << 20  # a zstd body may not inflate past this (zip bombs)
    max_proofs_per_request: int = 256
    # what one proof may hold: the agent's definition too, so it never signs what we refuse
    proof: ProofLimits = MICROPROOF_LIMITS
    max_json_bytes: int = 64 << 10  # device registration and other JSON bodies
    max_form_bytes: int = 8 << 10  # the web view's forms: a login is < 400 bytes
    # request bodies held at once, all requests together (cloud_sync/admission.py): past it
    # a request is answered 503 overloaded before its body is read. At least what one
    # upload may inflate to, so that a request alone always fits
    max_held_body_bytes: int = 128 << 20

    def __post_init__(self) -> None:
        largest = max(self.max_body_bytes, self.max_decompressed_bytes)
        if self.max_held_body_bytes < largest:
            raise HubError(
                f"a body budget of {self.max_held_body_bytes >> 20} MiB is less than one"
                f" request may hold ({largest >> 20} MiB): raise it (--body-budget-mib), or"
                " lower the body limits"
            )


COMMIT_GATHER_S = 0.002
"""Seconds an idle ingest writer waits before its first commit, so that uploads arriving in
that moment share it (cloud_sync/groupcommit.py; measured in docs/performance.md)."""


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
    # True: the hub serves plain HTTP on loopback (development, tests), so its cookies go
    # without Secure; otherwise browsers send them only over HTTPS (a proxy terminates TLS)
    plain_http: bool = False
    # who may frame the chart widget (/embed/...): a CSP frame-ancestors source list
    embed_frame_ancestors: str = "*"
    nats_url: str | None = None  # fleet jobs go to workers through JetStream; None: in process
    jobs_stream: str = "FACTORYOPS_JOBS"  # the JetStream stream (and subject prefix) of jobs
    # seconds an idle ingest writer waits so concurrent uploads share a commit (groupcommit.py)
    commit_gather_s: float = COMMIT_GATHER_S

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
        plain_http: bool = False,
        embed_frame_ancestors: str = "*",
        nats_url: str | None = None,
        jobs_stream: str | None = None,
    ) -> HubSettings:
        """Settings for ``data_dir`` (made 0700 when new); the admin token is made once and
        kept there (mode 0600)."""
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(mode=0o700, exist_ok=True)
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
            plain_http=plain_http,
            embed_frame_ancestors=embed_frame_ancestors,
            nats_url=nats_url,
            jobs_stream=jobs_stream or "FACTORYOPS_JOBS",
        )


def _load_or_create_token(path: Path) -> str:
    if path.exists():
        token = path.read_text(encoding="ascii").strip()
        if len(token) < 32:
            raise HubError(f"{path} holds a token shorter than 32 characters", hint=f"rm {path}")
        return token
    token = secrets.token_urlsafe(32)
    write_atomically(path, token.encode("ascii"), 0o600)
    return token
