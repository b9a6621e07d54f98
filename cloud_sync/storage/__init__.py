"""Hub storage: tables and the repository (SQLAlchemy Core; SQLite or PostgreSQL)."""

from cloud_sync.storage.repository import (
    Accepted,
    AcceptedHook,
    DeviceRow,
    HeadMoved,
    Store,
    WindowRow,
)

__all__ = ["Accepted", "AcceptedHook", "DeviceRow", "HeadMoved", "Store", "WindowRow"]
