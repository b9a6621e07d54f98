"""Tell the service manager how the agent is doing: systemd's readiness protocol (sd_notify(3)).

systemd passes a datagram socket's address in ``NOTIFY_SOCKET``; a service with
``Type=notify`` is "started" only once it sends ``READY=1``, so ``systemctl start`` and
anything ordered ``After=`` the agent wait until its signal handlers are in place and its
tasks run, and a stop that comes earlier is not lost. ``STOPPING=1`` marks the orderly
shutdown (the last upload may take up to 10 s). Without ``NOTIFY_SOCKET`` (a shell, a test
that did not ask) every call does nothing. Why this is written here and not a library:
docs/adr/0010-readiness-notification.md.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; True when it was sent.

    A manager that went away is logged, never raised: the agent's work does not depend on it.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # Linux abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", address, exc)
        return False
    return True
