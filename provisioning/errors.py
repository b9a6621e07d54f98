"""Errors of the provisioning CLI: one root, each with a fix in its ``hint``."""

from __future__ import annotations

from attestation.errors import Fixable

__all__ = ["ProvisioningError"]


class ProvisioningError(Fixable):
    """Root of every error raised by ``provisioning``."""
