"""Errors of the edge agent: one root with a ``hint``, and the specific failures.

Peer failures (``DeviceRefused``, ``DeviceTimeout``) are counted per signal and never stop
the other signals; configuration errors name the key, the file and the line.
"""

from __future__ import annotations

from attestation.errors import Fixable

__all__ = [
    "AgentError",
    "ConfigError",
    "DeviceRefused",
    "DeviceTimeout",
    "IllegalTransition",
    "SpoolError",
    "UplinkRefused",
    "WindowsGone",
]


class AgentError(Fixable):
    """Root of every error raised by ``agent``."""


class ConfigError(AgentError):
    """A configuration value that is missing, of the wrong type or out of range."""

    def __init__(self, path: str, key: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(
            f"{where}: {key}: {message}",
            hint="fix the value, then run `factoryops agent check-config FILE`",
        )
        self.path = path
        self.key = key
        self.line = line


class SpoolError(AgentError):
    """The local spool cannot be opened or written."""

    disk_full = False  # SQLITE_FULL: the runtime keeps the signed window and retries


class WindowsGone(SpoolError):
    """The hub asks for windows again that the spool can no longer send: their micro-proofs
    or raw readings were dropped under the disk cap after the hub acknowledged them."""


class DeviceRefused(AgentError):
    """A field device answered with an exception response (e.g. Modbus illegal address)."""


class DeviceTimeout(AgentError):
    """A field device did not answer in time."""


class UplinkRefused(AgentError):
    """The hub refused a proof; ``permanent`` when retrying the same bytes cannot help;
    ``retry_after_s``: the hub's ``Retry-After`` (an overloaded hub), the least wait."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        permanent: bool,
        hint: str = "",
        retry_after_s: float = 0.0,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.permanent = permanent
        self.retry_after_s = retry_after_s


class IllegalTransition(AgentError, RuntimeError):
    """A lifecycle event the state does not allow: a bug in the agent, not bad input."""

    def __init__(self, state: str, event: str) -> None:
        super().__init__(
            f"illegal transition: event {event!r} in state {state!r}",
            hint="this is a bug in the agent; report it with the log",
        )
        self.state = state
        self.event = event
