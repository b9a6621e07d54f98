"""Hub storage: tables and the repository (SQLAlchemy Core; SQLite or PostgreSQL)."""

from cloud_sync.storage.leaffile import LeavesMissing
from cloud_sync.storage.repository import (
    Accepted,
    DeviceRow,
    HeadMoved,
    Store,
    StoredLeaves,
    WindowRow,
)
from cloud_sync.storage.session import Connect, StorageFull, Transaction, Writer, WriteRace

__all__ = [
    "Accepted",
    "Connect",
    "DeviceRow",
    "HeadMoved",
    "LeavesMissing",
    "StorageFull",
    "Store",
    "StoredLeaves",
    "Transaction",
    "WindowRow",
    "WriteRace",
    "Writer",
]
