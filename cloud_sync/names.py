"""The hub's name rules, one place for the API, the CLI and the web view: operators, sites
and devices.
"""

from __future__ import annotations

import re

from cloud_sync.errors import ApiError

__all__ = ["OPERATOR_NAME", "SITE_NAME", "check_name"]

# lowercase, starts with a letter: it shows in audit rows, URLs and the roles map as typed
OPERATOR_NAME = r"^[a-z][a-z0-9_.-]{1,63}$"
# sites and devices: letters, digits and a few separators, never a slash, quote or bracket
SITE_NAME = r"^[\w .:@-]{1,128}$"


def check_name(rule: str, value: str, field: str) -> str:
    """``value`` if it matches ``rule`` (whole string, no trailing newline); else a 422
    naming ``field``."""
    if re.fullmatch(rule.removeprefix("^").removesuffix("$"), value) is None:
        raise ApiError(422, "invalid_request", f"{field}: {value[:80]!r} does not match {rule}")
    return value
