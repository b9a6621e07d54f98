"""The hub's FastAPI app: device registration, proof upload, receipts, a minimal web page.

``create_app(settings, *, store, clock)`` builds everything; there are no module globals
and importing this module starts nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hmac
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cbor2
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attestation import cborsafe
from attestation.errors import MalformedInput
from attestation.receipt import receipt_from_leaves
from attestation.utid import parse_utid, utid_bytes, utid_text
from cloud_sync.access import Access
from cloud_sync.anomalies import AnomalyBook
from cloud_sync.enroll import DeviceAuth, enroll_router
from cloud_sync.errors import ApiError
from cloud_sync.fleet_ca import FleetCA
from cloud_sync.groupcommit import GroupCommit
from cloud_sync.ingest import Ingestor, ProofUpload
from cloud_sync.log import HubLog
from cloud_sync.metering import Metering, Webhooks, parse_month
from cloud_sync.metrics import HubMetrics
from cloud_sync.policies import DevicePolicies
from cloud_sync.reports import parse_period, render_pdf, site_report
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Accepted, DeviceRow, Store
from cloud_sync.web.access_views import access_router
from cloud_sync.web.views import device_router

__all__ = ["create_app"]

Clock = Callable[[], int]  # nanoseconds since the Unix epoch
_TEMPLATES = Path(__file__).parent / "web" / "templates"


class DeviceRegistration(BaseModel):
    """Body of POST /v1/devices (development registration; see docs/protocol.md)."""

    model_config = ConfigDict(extra="forbid")
    public_key_pem: str = Field(max_length=4096)
    key_kind: str = Field(pattern="^(software|tpm)$")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[\w .:@-]+$")
    site: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[\w .:@-]+$")


class ErrorBody(BaseModel):
    """Every refusal: a stable ``error`` code scripts can match, and a ``detail`` for people.

    Proof uploads add ``index`` (the refused proof), ``results`` (the ones before it, which
    were accepted) and, for ``out_of_order``, ``expected_window``.
    """

    model_config = ConfigDict(extra="allow")
    error: str
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in (
        (400, "Malformed body"),
        (401, "Not authenticated, or a signature or attestation that does not verify"),
        (403, "Refused by policy (unknown, revoked or software device; untrusted TPM)"),
        (404, "Unknown device, reading or site"),
        (409, "Conflicts with the stored chain (fork, out of order)"),
        (413, "Too large"),
        (415, "Wrong content type or encoding"),
        (422, "A field that is invalid; `detail` names it"),
        (501, "Not available in this installation"),
    )
}


class _Timed:
    """Pure ASGI middleware: request latency by route template, and the headers every
    response carries. (Starlette's ``BaseHTTPMiddleware`` runs each request in a task group
    with memory streams: ~0.8 ms a request here, 13 % of a proof upload's CPU.)"""

    def __init__(self, app: ASGIApp, metrics: HubMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                # pages may not be framed (clickjacking of the forms), except the embed
                # widget, which says so itself; no MIME sniffing anywhere
                if "content-security-policy" not in headers:
                    headers["content-security-policy"] = "frame-ancestors 'none'"
                    headers["x-frame-options"] = "DENY"
                headers["x-content-type-options"] = "nosniff"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")  # the template, never the raw URL
            self.metrics.request_seconds.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - started
            )


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body while counting, so an oversized upload is refused before it is held."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body of {declared} bytes, limit {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body passed the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding != "zstd":
        raise ApiError(415, "bad_encoding", f"Content-Encoding {encoding!r}; use zstd or none")
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body)
        out = reader.read(limit + 1)
    except zstandard.ZstdError as err:
        raise ApiError(400, "bad_encoding", f"zstd body does not decompress: {err}") from err
    if len(out) > limit:
        raise ApiError(413, "too_large", f"zstd body inflates past {limit} bytes")
    return out


def _parse_uploads(body: bytes, settings: HubSettings) -> list[ProofUpload]:
    limits = settings.limits
    try:
        doc = cborsafe.loads(body)
    except cbor2.CBORDecodeError as err:
        raise ApiError(400, "malformed_body", f"body is not CBOR: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("proofs"), list):
        raise ApiError(400, "malformed_body", 'expected a map {"proofs": [...]}')
    proofs = doc["proofs"]
    if not proofs:
        raise ApiError(400, "malformed_body", "proofs is empty")
    if len(proofs) > limits.max_proofs_per_request:
        raise ApiError(
            413,
            "too_large",
            f"{len(proofs)} proofs in one request, limit {limits.max_proofs_per_request}",
        )
    uploads = []
    for i, p in enumerate(proofs):
        if not isinstance(p, dict):
            raise ApiError(400, "malformed_body", f"proofs[{i}] is not a map")
        cose, leaves = p.get("cose"), p.get("leaves")
        if not isinstance(cose, bytes):
            raise ApiError(400, "malformed_body", f"proofs[{i}].cose must be a byte string")
        if isinstance(leaves, list) and all(isinstance(x, bytes) for x in leaves):
            if len(leaves) > limits.max_leaves_per_proof:
                raise ApiError(
                    413,
                    "too_large",
                    f"proofs[{i}] has {len(leaves)} leaves, limit {limits.max_leaves_per_proof}",
                )
            leaves = b"".join(leaves)  # agents before ADR 0008 send a list
        if not isinstance(leaves, bytes):
            raise ApiError(
                400,
                "malformed_body",
                f"proofs[{i}].leaves must be a byte string (the leaves back to back)"
                " or an array of byte strings",
            )
        uploads.append(ProofUpload(cose, leaves))
    return uploads


def _device_counts(store: Store) -> dict[str, float]:
    devices = store.list_devices()
    return {
        "devices": float(len(devices)),
        "devices_revoked": float(sum(d.revoked for d in devices)),
    }


def create_app(
    settings: HubSettings, *, store: Store | None = None, clock: Clock | None = None
) -> FastAPI:
    """The hub application over ``store`` (opened from ``settings.db_url`` when None)."""
    now_ns: Clock = clock or time.time_ns
    store = store or Store.open(settings.db_url)
    log = HubLog.open(store.engine, settings.data_dir, settings.log_origin, settings.log_key_uri)
    anomalies = AnomalyBook(store.engine)

    def accepted(batch: Sequence[Accepted], conn: Connection) -> None:
        """Inside the transaction that stores proofs: log them, index their anomalies."""
        log.append([(a.row.utid, a.row.window, a.row.cose) for a in batch], conn)
        anomalies.record(batch, conn, now_ns())

    store.on_accepted = accepted
    fleet = FleetCA.load_or_create(
        settings.data_dir, settings.fleet_name, now=dt.datetime.now(dt.UTC)
    )
    ingestor = Ingestor(store, settings.limits, allow_software_keys=settings.allow_software_keys)
    metrics = HubMetrics()
    writer = GroupCommit(ingestor, on_commit=metrics.group_requests.observe)
    app = FastAPI(title="FactoryOps hub", version="1", responses=ERROR_RESPONSES)
    app.state.store = store
    app.state.log_key = log.signer.public_key()
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse(
            {"error": "invalid_request", "detail": f"{where}: {first.get('msg', 'invalid')}"},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http_error", "detail": str(err.detail)}, status_code=err.status_code
        )

    def require_admin(request: Request) -> None:
        got = request.headers.get("authorization", "")
        want = f"Bearer {settings.admin_token}"
        if not hmac.compare_digest(got.encode(), want.encode()):
            raise ApiError(401, "unauthorized", "this call needs the hub's admin bearer token")

    metrics.watch(lambda: {"log_entries": float(log.size()), **_device_counts(store)})

    app.add_middleware(_Timed, metrics=metrics)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        """Prometheus exposition (text format 0.0.4)."""
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    device_auth = DeviceAuth(store, now_ns)
    access = Access(store.engine, settings.admin_token, now_ns)
    app.state.access = access

    def may_read(request: Request, site: str) -> None:
        if not settings.open_reads:
            access.require(request, site, "viewer")

    def readable_sites(request: Request) -> set[str] | None:
        """None: every site."""
        if settings.open_reads:
            return None
        return access.require(request, None, "viewer").sites("viewer")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, **store.counts()}

    @app.post("/v1/devices")
    async def register_device(request: Request) -> JSONResponse:
        require_admin(request)  # development path: the hub's admin token only
        body = await _read_body(request, settings.limits.max_json_bytes)
        try:
            reg = DeviceRegistration.model_validate_json(body)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "body"
            raise ApiError(422, "invalid_request", f"{where}: {first['msg']}") from err
        try:
            key = serialization.load_pem_public_key(reg.public_key_pem.encode())
        except ValueError as err:
            raise ApiError(
                422, "invalid_request", "public_key_pem is not a PEM public key"
            ) from err
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ApiError(422, "invalid_request", "public_key_pem must be an EC P-256 key")
        if reg.key_kind == "tpm":
            # the admin cannot vouch that a key lives in a TPM; only the TPM can
            raise ApiError(
                403,
                "enroll_required",
                "TPM keys are enrolled with attestation (factoryops provision enroll),"
                " not registered",
            )
        if reg.key_kind == "software" and not settings.allow_software_keys:
            raise ApiError(
                403,
                "software_key_refused",
                "this hub accepts only TPM-held keys (start it with --allow-software-keys"
                " for development)",
            )
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        utid = utid_text(utid_bytes(spki))
        existing = store.device(utid)
        now = now_ns()
        row = existing or store.add_device(
            utid=utid,
            public_key=spki,
            key_kind=reg.key_kind,
            certificate=fleet.issue(spki, reg.key_kind, now=_utc(now)),
            name=reg.name,
            site=reg.site,
            now_ns=now,
        )
        if existing is None:
            access.audit("admin", "device.register", utid, {"site": reg.site, "kind": reg.key_kind})
        cert_pem = _der_to_pem(row.certificate)
        return JSONResponse(
            {
                "utid": utid,
                "certificate_pem": cert_pem,
                "fleet_ca_pem": fleet.pem(),
                "log_vkey": log.verifier.to_vkey(),
            },
            status_code=200 if existing else 201,
        )

    @app.post("/v1/proofs")
    async def upload_proofs(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip() != "application/cbor":
            raise ApiError(415, "bad_content_type", f"Content-Type {ctype!r}; use application/cbor")
        body = await _read_body(request, settings.limits.max_body_bytes)
        body = _decompress(
            body,
            request.headers.get("content-encoding", "").strip().lower(),
            settings.limits.max_decompressed_bytes,
        )
        caller = device_auth.utid_of(request.headers.get("authorization", ""))
        uploads = _parse_uploads(body, settings)
        started = time.perf_counter()
        checked = ingestor.check_many(uploads, now_ns=now_ns(), caller=caller)
        done, refused = await writer.store(checked)  # with other requests: one commit
        per_proof = (time.perf_counter() - started) / len(uploads)
        for _ in done:  # a histogram of seconds a proof: one observation each
            metrics.ingest_seconds.observe(per_proof)
        for status, n in Counter(r.status for r in done).items():  # one update a status
            metrics.proofs.labels(status, "").inc(n)
        metrics.readings.inc(sum(r.readings for r in done))
        results = [r.as_json() for r in done]
        if refused is not None:
            index, err = refused
            metrics.proofs.labels("refused", err.code).inc()
            # proofs before the refused one stay accepted and are listed
            err.extra.update(index=index, results=results)
            raise err
        return JSONResponse({"results": results})

    # the routers after the upload route: a request is matched against the routes in order,
    # and uploads are most of the hub's traffic (~40 fewer patterns tried a request)
    app.include_router(
        enroll_router(settings, store, fleet, device_auth, now_ns, access, log.verifier.to_vkey())
    )
    app.include_router(access_router(access, settings))

    def readable_device(request: Request, utid: str) -> DeviceRow:
        device = store.device(_checked_utid(utid))
        if device is None:
            raise ApiError(404, "unknown_device", f"{utid} is not enrolled with this hub")
        may_read(request, device.site)
        return device

    @app.get("/v1/devices")
    def list_devices(request: Request) -> dict[str, Any]:
        sites = readable_sites(request)
        return {
            "devices": [
                _device_json(d) for d in store.list_devices() if sites is None or d.site in sites
            ]
        }

    @app.get("/v1/devices/{utid}")
    def get_device(utid: str, request: Request) -> dict[str, Any]:
        device = readable_device(request, utid)
        return {**_device_json(device), "storage_policy": policies.get(device)}

    @app.post("/v1/devices/{utid}/policy")
    async def post_policy(utid: str, request: Request) -> dict[str, Any]:
        """A device states its storage (shedding) policy, signed with its key."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/cose":
            raise ApiError(415, "bad_content_type", "send the signed policy as application/cose")
        data = await _read_body(request, 4096)
        device = store.device(_checked_utid(utid))
        if device is None:
            raise ApiError(404, "unknown_device", f"{utid} is not enrolled with this hub")
        if device.revoked:
            raise ApiError(403, "revoked_device", f"{utid} is revoked")
        caller = device_auth.utid_of(request.headers.get("authorization", ""))
        if device.key_kind == "tpm" and caller != device.utid:
            raise ApiError(401, "token_required", "get a device token first")
        doc = policies.accept(device, data, now_ns())
        return {"utid": device.utid, "storage_policy": doc}

    @app.get("/v1/devices/{utid}/readings/{seq}/receipt")
    def receipt(utid: str, seq: int, request: Request) -> JSONResponse:
        device = readable_device(request, utid)
        utid = device.utid
        window = store.window_for_seq(utid, seq)
        if window is None:
            raise ApiError(404, "unknown_reading", f"no accepted window holds seq {seq}")
        # Rebuilt from the stored leaves on every request: an edit to a stored byte must
        # show up as a receipt that fails verification.
        leaves = store.leaves_of_window(utid, window.window)
        index = seq - window.first_seq
        if not 0 <= index < len(leaves):
            raise ApiError(404, "unknown_reading", f"seq {seq} is not stored")
        try:
            rc = receipt_from_leaves(leaves, index, window.cose, certificates=(device.certificate,))
        except MalformedInput as err:
            raise ApiError(500, "corrupt_store", f"stored leaf of seq {seq}: {err}") from err
        logged = log.receipt(utid, window.window)
        if logged is not None:
            rc = dataclasses.replace(rc, log_receipt=logged[0], checkpoint=logged[1])
        return JSONResponse(rc.to_json())

    @app.get("/v1/sites/{site}/report", response_model=None)
    def report(
        site: str,
        request: Request,
        start: str = Query(alias="from", max_length=40),
        end: str = Query(alias="to", max_length=40),
        fmt: str = Query(default="json", alias="format", pattern="^(json|pdf)$"),
    ) -> Response | dict[str, Any]:
        """The site's proof report for [from, to): JSON facts, or the same facts as a PDF."""
        may_read(request, site)
        period = parse_period(start, end)
        facts = site_report(store, log, site, *period, now_ns())
        if fmt == "pdf":
            name = f"factoryops-{site}-{period[0]:%Y%m%d}-{period[1]:%Y%m%d}.pdf"
            return Response(
                render_pdf(facts),
                media_type="application/pdf",
                headers={"content-disposition": f'attachment; filename="{name}"'},
            )
        return facts

    policies = DevicePolicies(store.engine)
    metering = Metering(store.engine, log, now_ns)
    webhooks = Webhooks(store.engine, settings.webhook_url, settings.webhook_secret)
    webhooks.start()  # resumes deliveries a previous run left pending
    app.state.webhooks = webhooks

    @app.get("/v1/sites/{site}/usage")
    def usage(
        site: str, request: Request, month: str = Query(max_length=7, examples=["2026-11"])
    ) -> dict[str, Any]:
        """Accepted proofs and readings per UTC day of ``month`` (the basis of billing)."""
        may_read(request, site)
        days = metering.usage(site, *parse_month(month))
        return {
            "site": site,
            "month": month,
            "days": days,
            "proofs": sum(d["proofs"] for d in days),
            "readings": sum(d["readings"] for d in days),
        }

    @app.post("/v1/sites/{site}/usage/{month}/close")
    def close_month(site: str, month: str, request: Request) -> dict[str, Any]:
        """Site admin: the month's signed usage statement (once); a billing event."""
        who = access.require(request, site, "admin")
        access.check_csrf(who, request.headers.get("x-csrf-token"))
        note, created = metering.close_month(site, month)
        if created:
            access.audit(who.name, "usage.close", f"{site}/{month}", {})
            webhooks.emit("usage.statement", {"site": site, "month": month, "statement": note})
        return {"site": site, "month": month, "statement": note, "created": created}

    @app.get("/v1/sites/{site}/usage/{month}/statement")
    def statement(site: str, month: str, request: Request) -> dict[str, str]:
        """A closed month's statement: a signed note, checkable with the hub's log key."""
        may_read(request, site)
        parse_month(month)
        note = metering.statement(site, month)
        if note is None:
            raise ApiError(404, "no_statement", f"month {month} of {site} is not closed")
        return {"site": site, "month": month, "statement": note}

    @app.get("/v1/webhooks/deliveries")
    def deliveries(request: Request) -> dict[str, Any]:
        """Hub admin: every billing event and its delivery state."""
        who = access.require(request, None, "admin")
        if not who.superuser:
            raise ApiError(403, "forbidden", "only the hub's admin token sees deliveries")
        return {"deliveries": webhooks.deliveries()}

    @app.get("/v1/anomalies")
    def anomaly_list(
        request: Request,
        utid: str | None = Query(default=None, max_length=69),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Newest first: windows whose signed micro-proof reports anomalous rows."""
        sites = readable_sites(request)
        site_of = {d.utid: d.site for d in store.list_devices()}
        events = anomalies.recent(utid=utid, limit=limit)
        return {
            "anomalies": [e for e in events if sites is None or site_of.get(e["utid"]) in sites]
        }

    @app.get("/v1/log/checkpoint", response_class=PlainTextResponse)
    def checkpoint() -> str:
        return log.checkpoint()[1]

    @app.get("/v1/log/key")
    def log_key() -> dict[str, str]:
        pem = log.signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"origin": log.origin, "vkey": log.verifier.to_vkey(), "pem": pem.decode()}

    @app.get("/v1/log/proof/consistency")
    def consistency(
        size1: int = Query(alias="from"), size2: int = Query(alias="to")
    ) -> dict[str, Any]:
        proof = log.consistency(size1, size2)
        return {"from": size1, "to": size2, "proof": [base64.b64encode(h).decode() for h in proof]}

    @app.get("/v1/log/proof/inclusion")
    def inclusion(index: int, size: int) -> dict[str, Any]:
        path = log.inclusion(index, size)
        return {"index": index, "size": size, "path": [base64.b64encode(h).decode() for h in path]}

    app.include_router(device_router(store, settings, anomalies, log))

    return app


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


def _der_to_pem(der: bytes) -> str:
    from cryptography import x509  # noqa: PLC0415 - registration is a cold path

    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _checked_utid(utid: str) -> str:
    try:
        parse_utid(utid)
    except MalformedInput as err:
        raise ApiError(422, "invalid_request", str(err)) from err
    return utid


def _device_json(d: Any) -> dict[str, Any]:
    return {
        "utid": d.utid,
        "name": d.name,
        "site": d.site,
        "key_kind": d.key_kind,
        "revoked": d.revoked,
        "windows": d.head_window + 1,
        "last_seq": d.head_last_seq,
        "readings": d.n_readings,
        "last_seen_ns": d.last_seen_ns,
    }
