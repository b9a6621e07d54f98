"""provisioning: field-tech tooling for the gateway's TPM (a swtpm launcher for tests/demo)."""

from provisioning.errors import ProvisioningError

__all__ = ["ProvisioningError"]
