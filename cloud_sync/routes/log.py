"""The transparency log's public face: checkpoint, key, consistency and inclusion proofs."""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import MAX_INT64

__all__ = ["router"]


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()
    log = deps.log

    @api.get("/v1/log/checkpoint", response_class=PlainTextResponse)
    def checkpoint() -> str:
        return log.checkpoint()[1]

    @api.get("/v1/log/key")
    def log_key() -> dict[str, str]:
        pem = log.signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"origin": log.origin, "vkey": log.verifier.to_vkey(), "pem": pem.decode()}

    @api.get("/v1/log/proof/consistency")
    def consistency(
        size1: int = Query(alias="from", ge=0, le=MAX_INT64),
        size2: int = Query(alias="to", ge=0, le=MAX_INT64),
    ) -> dict[str, Any]:
        return {"from": size1, "to": size2, "proof": _b64(log.consistency(size1, size2))}

    @api.get("/v1/log/proof/inclusion")
    def inclusion(
        index: int = Query(ge=0, le=MAX_INT64), size: int = Query(ge=1, le=MAX_INT64)
    ) -> dict[str, Any]:
        return {"index": index, "size": size, "path": _b64(log.inclusion(index, size))}

    return api
