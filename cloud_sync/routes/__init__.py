"""The hub's HTTP routes, one router per resource, each built from one ``HubDeps``.

``cloud_sync.app.create_app`` only wires these together; the web pages' routers live in
``cloud_sync.web``.
"""

from cloud_sync.routes.deps import Clock, HubDeps

__all__ = ["Clock", "HubDeps"]
