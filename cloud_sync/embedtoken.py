"""Embed tokens: a partner's signed, scoped, expiring pass to one widget (not a session).

A token names what it shows (one device, or one site), until when, and the only origins
whose pages may frame it (the widget's CSP ``frame-ancestors``). It is the payload's JSON
and an HMAC-SHA256 of it under a key only the hub holds (``DATA_DIR/embed-key``, 0600), both
base64url: ``fo-embed-<payload>.<mac>``. Pure: bytes and a clock value in, a grant out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Literal

__all__ = ["BadEmbedToken", "EmbedGrant", "EmbedLimits", "make_token", "read_token"]

PREFIX = "fo-embed-"
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")


@dataclass(frozen=True, slots=True)
class EmbedLimits:
    """Bounds on what a token may grant (each with its reason)."""

    max_ttl_s: int = 90 * 86_400  # a partner's access is renewed at least each quarter
    max_origins: int = 8  # a CSP source list that stays readable in an audit row
    max_token_chars: int = 2048  # a URL path component browsers and proxies all accept


class BadEmbedToken(ValueError):
    """A token that is malformed, forged, expired or outside its scope (what, in words)."""


@dataclass(frozen=True, slots=True)
class EmbedGrant:
    scope: Literal["device", "site"]
    target: str  # the device's UTID or the site's name
    expires_s: int  # Unix seconds
    frame_ancestors: tuple[str, ...]
    token_id: str

    def csp_sources(self) -> str:
        return " ".join(self.frame_ancestors)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_origins(origins: list[str] | tuple[str, ...], limits: EmbedLimits) -> tuple[str, ...]:
    """The origins a token lets frame its widget: 1 to ``max_origins`` plain origins."""
    if not 1 <= len(origins) <= limits.max_origins:
        raise BadEmbedToken(
            f"frame_ancestors: 1 to {limits.max_origins} origins, got {len(origins)}"
        )
    for o in origins:
        if not _ORIGIN.match(o):
            raise BadEmbedToken(
                f"frame_ancestors: {o[:80]!r} is not an origin like https://host[:port]"
            )
    return tuple(origins)


def make_token(
    key: bytes,
    scope: Literal["device", "site"],
    target: str,
    *,
    now_s: int,
    ttl_s: int,
    frame_ancestors: list[str] | tuple[str, ...],
    limits: EmbedLimits = EmbedLimits(),
) -> tuple[str, EmbedGrant]:
    """A new token and the grant it carries (its id goes into the audit log)."""
    if not 60 <= ttl_s <= limits.max_ttl_s:
        raise BadEmbedToken(f"ttl_s: 60 to {limits.max_ttl_s} seconds, got {ttl_s}")
    grant = EmbedGrant(
        scope, target, now_s + ttl_s, check_origins(frame_ancestors, limits), secrets.token_hex(8)
    )
    payload = json.dumps(
        {"v": 1, "scope": scope, "target": target, "exp": grant.expires_s,
         "fa": list(grant.frame_ancestors), "id": grant.token_id},
        separators=(",", ":"), sort_keys=True,
    ).encode()  # fmt: skip
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{PREFIX}{_b64(payload)}.{_b64(mac)}", grant


def read_token(
    key: bytes, token: str, *, now_s: int, limits: EmbedLimits = EmbedLimits()
) -> EmbedGrant:
    """The grant of a genuine, unexpired token; ``BadEmbedToken`` saying why otherwise."""
    if len(token) > limits.max_token_chars or not token.startswith(PREFIX):
        raise BadEmbedToken("not an embed token")
    body, _, mac_text = token[len(PREFIX) :].partition(".")
    try:
        payload, mac = _unb64(body), _unb64(mac_text)
    except (ValueError, TypeError) as err:
        raise BadEmbedToken("not an embed token") from err
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise BadEmbedToken("the token was not made by this hub, or was changed")
    doc = json.loads(payload)  # ours: signed by our key, so well formed
    if doc["exp"] < now_s:
        raise BadEmbedToken("the token expired: ask the site's operator for a new one")
    return EmbedGrant(doc["scope"], doc["target"], doc["exp"], tuple(doc["fa"]), doc["id"])
