"""Errors of the hub's update repository (TUF)."""

from __future__ import annotations

from cloud_sync.errors import HubError

__all__ = ["PublishRefused", "UpdatesError"]


class UpdatesError(HubError):
    """Root of the update repository's errors."""


class PublishRefused(UpdatesError):
    """A target that will not be published (its files do not match its manifest, ...)."""
