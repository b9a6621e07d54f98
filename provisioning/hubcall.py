"""One JSON POST to the hub for a provisioning step, its failures as ``ProvisioningError``
with the fix for the hub's error code (enrollment and key rotation share it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from provisioning.errors import ProvisioningError

__all__ = ["post_json"]


def post_json(
    client: httpx.Client,
    url: str,
    body: dict[str, Any],
    *,
    what: str,
    fixes: Mapping[str, str],
    default_fix: str,
) -> dict[str, Any]:
    """POST ``body`` to ``url``; the answer's JSON, or one clear refusal naming ``what``."""
    try:
        r = client.post(url, json=body)
    except httpx.HTTPError as err:
        raise ProvisioningError(
            f"cannot reach the hub at {url}: {type(err).__name__}: {err}",
            hint="check the hub URL and the network; nothing was changed, rerun when it is up",
        ) from err
    try:
        doc: dict[str, Any] = r.json()
    except ValueError:
        doc = {}
    if r.status_code >= 300:
        code = str(doc.get("error", f"http_{r.status_code}"))
        raise ProvisioningError(
            f"hub refused {what}: {code}: {doc.get('detail', r.text[:200])}",
            hint=fixes.get(code, default_fix),
        )
    return doc
