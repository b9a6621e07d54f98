"""Hub storage: tables and the repository (SQLAlchemy Core; SQLite or PostgreSQL)."""

from cloud_sync.storage.repository import AcceptedHook, DeviceRow, HeadMoved, Store, WindowRow

__all__ = ["AcceptedHook", "DeviceRow", "HeadMoved", "Store", "WindowRow"]
