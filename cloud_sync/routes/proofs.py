"""``POST /v1/proofs``: batches of signed micro-proofs and their leaves (CBOR, maybe zstd)."""

from __future__ import annotations

import time
from typing import Any

import cbor2
import zstandard
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from attestation import cborsafe
from cloud_sync import chain
from cloud_sync.admission import charge
from cloud_sync.errors import ApiError, HubFault
from cloud_sync.ingest import ProofUpload
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import body_doc, read_body, require_content_type
from cloud_sync.settings import HubSettings
from cloud_sync.storage import StorageFull

__all__ = ["REFUSAL_STATUS", "UPLOADS", "direct_routes", "parse_uploads", "router"]

UPLOADS = "/v1/proofs"

REFUSAL_STATUS: dict[str, int] = {
    chain.Malformed.code: 400,
    chain.Noncanonical.code: 400,
    chain.BadSignature.code: 401,
    chain.TokenRequired.code: 401,
    chain.UnknownDevice.code: 403,
    chain.RevokedDevice.code: 403,
    chain.SoftwareKeyRefused.code: 403,
    chain.WrongDevice.code: 403,
    chain.Fork.code: 409,
    chain.OutOfOrder.code: 409,
    chain.TooLarge.code: 413,
    chain.LeafCount.code: 422,
    chain.BadLeaf.code: 422,
    chain.RootMismatch.code: 422,
    chain.SeqGap.code: 422,
}
"""The HTTP status of each refusal of the ingest rules (``cloud_sync.chain``), in one place."""


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
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


def parse_uploads(body: bytes, settings: HubSettings) -> list[ProofUpload]:
    """The upload body ``{"proofs": [{"cose", "leaves"}, ...]}`` within the hub's limits."""
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
            if len(leaves) > limits.proof.max_leaves:
                raise ApiError(
                    413,
                    "too_large",
                    f"proofs[{i}] has {len(leaves)} leaves, limit {limits.proof.max_leaves}",
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


def upload_schema(settings: HubSettings) -> dict[str, Any]:
    """The upload body's JSON Schema (the body itself is CBOR; docs/protocol.md)."""
    binary = {"type": "string", "format": "binary"}
    proof = {
        "type": "object",
        "required": ["cose", "leaves"],
        "properties": {
            "cose": {**binary, "description": "the micro-proof: tagged COSE_Sign1 bytes"},
            "leaves": {
                "description": "the window's leaves back to back (an array of byte strings"
                " from agents before ADR 0008)",
                "oneOf": [
                    binary,
                    {
                        "type": "array",
                        "items": binary,
                        "maxItems": settings.limits.proof.max_leaves,
                    },
                ],
            },
        },
    }
    return {
        "type": "object",
        "required": ["proofs"],
        "properties": {
            "proofs": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.limits.max_proofs_per_request,
                "items": proof,
            }
        },
    }


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()
    settings, metrics = deps.settings, deps.metrics

    @api.post(UPLOADS, openapi_extra=body_doc(upload_schema(settings), "application/cbor"))
    async def upload_proofs(request: Request) -> JSONResponse:
        require_content_type(request, "application/cbor")
        sent = await read_body(request, settings.limits.max_body_bytes)
        body = decompress(
            sent,
            request.headers.get("content-encoding", "").strip().lower(),
            settings.limits.max_decompressed_bytes,
        )
        if body is not sent:  # inflated: held beside what was sent, so charged as well
            charge(request.scope, deps.budget, len(body))
        caller = deps.device_auth.utid_of(request.headers.get("authorization", ""))
        uploads = parse_uploads(body, settings)
        started = time.perf_counter()
        checked = deps.ingestor.check_many(uploads, now_ns=deps.now_ns(), caller=caller)
        try:
            done, refused = await deps.writer.store(checked)  # with other requests: one commit
        except StorageFull as full:  # nothing of it stored: the agent sends it again later
            raise HubFault(
                503, "storage_full", "the hub's disk is full; nothing of this upload was stored"
            ) from full
        per_proof = (time.perf_counter() - started) / len(uploads)
        for r in done:  # a histogram of seconds a proof: one observation each
            metrics.ingest_seconds.observe(per_proof)
            metrics.proof_outcome(r.status).inc()
        metrics.readings.inc(sum(r.readings for r in done))
        results = [r.as_json() for r in done]
        if refused is not None:
            index, err = refused
            metrics.proof_outcome("refused", err.code).inc()
            # proofs before the refused one stay accepted and are listed
            raise ApiError(
                REFUSAL_STATUS[err.code],
                err.code,
                err.detail,
                **err.extra,
                index=index,
                results=results,
            ) from err
        return JSONResponse({"results": results})

    return api


def direct_routes(api: APIRouter) -> list[APIRoute]:
    """The upload route of ``router``'s result: the app serves it directly (``_Direct``)."""
    return [r for r in api.routes if isinstance(r, APIRoute) and r.path == UPLOADS]
