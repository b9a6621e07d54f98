"""Operators and their API keys, and the audit log: the hub admin's API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from cloud_sync.access import Principal, client_ip
from cloud_sync.names import OPERATOR_NAME
from cloud_sync.routes.deps import HubDeps
from cloud_sync.routes.request import body_doc, json_body, links_doc, model_schema

__all__ = ["OperatorOrder", "router"]

NAME_PATTERN = OPERATOR_NAME  # the one rule for operators' names (API and CLI)


class OperatorOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=NAME_PATTERN)
    password: str = Field(min_length=12, max_length=256)
    roles: dict[str, str] = Field(default_factory=dict, max_length=256)


# a new operator gets an API key next (stateful fuzzing follows the link)
_OPERATOR_LINKS = links_doc(
    201,
    {
        "ApiKey": {
            "operationId": "createApiKey",
            "parameters": {"username": "$response.body#/username"},
        }
    },
)


def router(deps: HubDeps) -> APIRouter:
    api = APIRouter()
    access = deps.access

    def superuser(request: Request) -> Principal:
        return access.require_superuser(request, "manages operators")

    @api.post(
        "/v1/operators",
        status_code=201,
        openapi_extra={**body_doc(model_schema(OperatorOrder)), **_OPERATOR_LINKS},
    )
    async def create_operator(request: Request) -> dict[str, Any]:
        """Hub admin: an operator with roles per site (viewer, operator, admin)."""
        who = superuser(request)  # before the body is read: strangers get nothing parsed
        order = await json_body(request, OperatorOrder, deps.settings.limits.max_json_bytes)
        await run_in_threadpool(  # scrypt (~50 ms) off the event loop
            access.create_operator,
            order.username,
            order.password,
            order.roles,
            who.name,
            client_ip(request),
        )
        return {"username": order.username, "roles": order.roles}

    @api.post("/v1/operators/{username}/api-keys", status_code=201, operation_id="createApiKey")
    def create_api_key(
        username: Annotated[str, Path(pattern=NAME_PATTERN)], request: Request
    ) -> dict[str, Any]:
        """Hub admin: an API key for an operator (shown once; only its hash is kept)."""
        who = superuser(request)
        key = access.create_api_key(username, who.name, client_ip(request))
        return {"username": username, "api_key": key}

    @api.get("/v1/audit")
    def audit(request: Request, limit: int = Query(default=200, ge=1, le=1000)) -> dict[str, Any]:
        """Hub admin: the newest audit entries (every write, login and refusal of a login)."""
        superuser(request)
        return {"entries": access.audit_entries(limit)}

    return api
