"""The request helpers every router shares: bodies read within their limit, content types,
"device or 404", read permissions and the one formatter of pydantic errors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import Path, Request
from pydantic import BaseModel, ValidationError

from attestation.errors import MalformedInput
from attestation.utid import parse_utid
from cloud_sync.access import Principal
from cloud_sync.errors import ApiError
from cloud_sync.names import SITE_NAME
from cloud_sync.routes.deps import HubDeps
from cloud_sync.storage import DeviceRow, Store

__all__ = [
    "MAX_INT64",
    "MONTH_PATTERN",
    "SITE_PATTERN",
    "UTID_PATTERN",
    "Month",
    "Seq",
    "Site",
    "Utid",
    "body_doc",
    "content_security_policy",
    "device_or_404",
    "form_body",
    "invalid_request",
    "json_body",
    "links_doc",
    "may_read",
    "model_schema",
    "read_body",
    "readable_sites",
    "require_content_type",
    "validation_detail",
    "visible_device",
]

Model = TypeVar("Model", bound=BaseModel)

UTID_PATTERN = r"^utid:[0-9a-f]{64}$"  # "utid:" + SHA-256 of the key's SPKI, lowercase hex
MAX_INT64 = 2**63 - 1  # seqs, log indices and sizes are stored as signed 64-bit integers

SITE_PATTERN = SITE_NAME  # site and device names: letters, digits, a few separators
# YYYY-MM, a UTC month from 1970 to 2199 (times are int64 Unix nanoseconds: up to 2262)
MONTH_PATTERN = r"^(19[7-9][0-9]|2[01][0-9]{2})-(0[1-9]|1[0-2])$"

# the path parameters the routes share, with the bounds the OpenAPI document shows
Utid = Annotated[str, Path(pattern=UTID_PATTERN, examples=["utid:" + "0" * 64])]
Seq = Annotated[int, Path(ge=0, le=MAX_INT64)]
Site = Annotated[str, Path(pattern=SITE_PATTERN)]
Month = Annotated[str, Path(pattern=MONTH_PATTERN, examples=["2026-11"])]


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(x, defs) for x in node]
    return node


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with its definitions inlined (an OpenAPI operation cannot
    point into pydantic's ``$defs``)."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})
    inlined: dict[str, Any] = _inline(raw, defs)
    return inlined


def body_doc(schema: Mapping[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself (within its limit), so
    that the document still says what the body is."""
    content = {media_type: {"schema": dict(schema)}}
    return {"requestBody": {"required": True, "content": content}}


def links_doc(status: int, links: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``openapi_extra`` naming, as OpenAPI links, what can be asked next with what a
    ``status`` answer returned (stateful fuzzing follows them)."""
    return {"responses": {str(status): {"links": dict(links)}}}


def validation_detail(errors: Iterable[Mapping[str, Any]]) -> str:
    """``field.path: message`` of the first error (pydantic and FastAPI's alike)."""
    first = next(iter(errors), {})
    where = ".".join(str(x) for x in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def invalid_request(err: ValidationError) -> ApiError:
    return ApiError(422, "invalid_request", validation_detail(err.errors()))


async def read_body(request: Request, limit: int) -> bytes:
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


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ApiError(422, "invalid_request", f"{key}: given twice")
        seen[key] = value
    return seen


async def json_body(request: Request, model: type[Model], limit: int) -> Model:
    """The body as ``model``: 415 unless ``application/json`` (a form or text/plain body
    is what a cross-site page can send), 413 past ``limit`` (read no further), 422 for a
    key given twice or naming the first invalid field."""
    require_content_type(request, "application/json")
    body = await read_body(request, limit)
    # one meaning per body: a repeated key is refused, not resolved to its last value (not
    # JSON at all: pydantic names the error below)
    with contextlib.suppress(ValueError):
        json.loads(body, object_pairs_hook=_no_duplicate_keys)
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise invalid_request(err) from err


async def form_body(
    request: Request, limit: int, fields: Mapping[str, int], optional: Mapping[str, str] = {}
) -> dict[str, str]:
    """An HTML form (``application/x-www-form-urlencoded``) read within ``limit``: each field
    named in ``fields`` exactly once (or absent, if ``optional`` gives its default) and at
    most its length (422 naming it); other fields are ignored."""
    require_content_type(request, "application/x-www-form-urlencoded")
    body = await read_body(request, limit)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as err:
        raise ApiError(400, "malformed_body", "form body is not UTF-8") from err
    out: dict[str, str] = {}
    for name, max_length in fields.items():
        values = [v for k, v in pairs if k == name]
        if not values and name in optional:
            values = [optional[name]]
        if len(values) != 1:
            raise ApiError(422, "invalid_request", f"{name}: expected once, got {len(values)}")
        if len(values[0]) > max_length:
            raise ApiError(422, "invalid_request", f"{name}: at most {max_length} characters")
        out[name] = values[0]
    return out


def require_content_type(request: Request, *allowed: str) -> None:
    """415 unless the media type (parameters aside) is one of ``allowed``."""
    got = request.headers.get("content-type", "")
    if got.split(";")[0].strip().lower() not in allowed:
        raise ApiError(
            415, "bad_content_type", f"Content-Type {got[:80]!r}; use {' or '.join(allowed)}"
        )


def checked_utid(utid: str) -> str:
    try:
        parse_utid(utid)
    except MalformedInput as err:
        raise ApiError(422, "invalid_request", str(err)) from err
    return utid


def device_or_404(store: Store, utid: str, *, active: bool = False) -> DeviceRow:
    """The enrolled device ``utid`` (422 for a malformed id, 404 for an unknown one);
    ``active``: 403 for a revoked one."""
    device = store.device(checked_utid(utid))
    if device is None:
        raise ApiError(404, "unknown_device", f"{utid} is not enrolled with this hub")
    if active and device.revoked:
        raise ApiError(403, "revoked_device", f"{utid} is revoked")
    return device


def visible_device(
    deps: HubDeps, request: Request, utid: str, role: str = "viewer", *, csrf: str | None = None
) -> tuple[DeviceRow, Principal | None]:
    """The device and who asks, if they may see it: an unknown device and one of a site
    the caller cannot read get the same 404 (a device's existence is not told to those
    who may not see it); 403 when they may see it but lack ``role``. A hub with open
    reads shows every device to anyone (the principal is then None for reads)."""
    checked_utid(utid)
    who = None
    if role != "viewer" or not deps.settings.open_reads:
        who = deps.access.require(request, None, "viewer", csrf=csrf)
    device = deps.store.device(utid)
    if device is None or (who is not None and not who.can(device.site, "viewer")):
        raise ApiError(404, "unknown_device", f"{utid} is not enrolled with this hub")
    if who is not None and not who.can(device.site, role):
        raise ApiError(403, "forbidden", f"{who.name} is not {role} of site {device.site}")
    return device, who


def content_security_policy(frame_ancestors: str = "'none'") -> str:
    """What a page may load: scripts only from the hub's own files (no inline script or
    handler), no plugins, forms posted only back to the hub. Inline ``<style>`` stays
    allowed: the pages carry their styles, and a style cannot run code."""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {frame_ancestors}",
        ]
    )


def may_read(deps: HubDeps, request: Request, site: str) -> None:
    if not deps.settings.open_reads:
        deps.access.require(request, site, "viewer")


def readable_sites(deps: HubDeps, request: Request) -> set[str] | None:
    """The sites the caller may read; None: every site."""
    if deps.settings.open_reads:
        return None
    return deps.access.require(request, None, "viewer").sites("viewer")
