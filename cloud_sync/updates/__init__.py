"""Signed updates to the gateways: the hub is a TUF repository of models and agent
configuration fragments (``repository``), published by jobs (``publish``), served by
``cloud_sync.routes.updates``; root keys are made offline (``keys``, ``hub tuf init``)."""

from cloud_sync.updates.errors import PublishRefused, UpdatesError
from cloud_sync.updates.publish import Published, latest_path, publish_config, publish_model
from cloud_sync.updates.repository import Lifetimes, NewTarget, TufRepository, init_repository

__all__ = [
    "Lifetimes",
    "NewTarget",
    "PublishRefused",
    "Published",
    "TufRepository",
    "UpdatesError",
    "init_repository",
    "latest_path",
    "publish_config",
    "publish_model",
]
