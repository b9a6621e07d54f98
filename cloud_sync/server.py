"""Run the hub under uvicorn in a background thread (tests, the demo) on a chosen port.

``HubServer`` binds its own socket, so a stopped hub can be restarted on the same port; with
``port=0`` it picks one outside the kernel's ephemeral range, which no outgoing connection can
take while the hub is down (``attestation/localports.py``).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from attestation.localports import free_port
from cloud_sync.app import create_app
from cloud_sync.errors import HubError
from cloud_sync.settings import HubSettings

__all__ = ["HubServer"]


@dataclass
class HubServer:
    """``start()`` serves ``create_app(settings)`` on host:port; ``stop()`` shuts it down."""

    settings: HubSettings
    host: str = "127.0.0.1"
    port: int = 0
    startup_timeout_s: float = 15.0
    _server: uvicorn.Server | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HubServer:
        if self._thread is not None:
            raise HubError("hub server already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port or free_port(self.host)))
        self.port = sock.getsockname()[1]
        app = create_app(self.settings)
        # the lifespan starts the app's background work and, on stop, closes its database
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"hub:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HubError(f"hub did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
