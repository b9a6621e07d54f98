"""cloud_sync: the hub (FastAPI app, storage, ingest) that verifies and keeps micro-proofs.

Kept light on import: the app lives in ``cloud_sync.app`` (``create_app``) and the
thread server in ``cloud_sync.server`` (``HubServer``).
"""

from cloud_sync.errors import ApiError, HubError
from cloud_sync.settings import HubLimits, HubSettings

__all__ = ["ApiError", "HubError", "HubLimits", "HubSettings"]
