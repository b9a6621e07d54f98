"""Loopback ports for the servers this project starts itself: simulated TPMs, brokers, PLCs
and hubs in tests, HIL rigs, benchmarks and the demo.

A port is picked at random **outside the kernel's ephemeral range** (mostly below it, on
Linux's defaults), never with ``bind(0)``. Many of these servers are stopped and started
again on the same port (a power cut, a broker restart, a TPM Reset), and a port from
``bind(0)`` is an ephemeral one: while its server was down the kernel could give it to any
process's outgoing connection, and the restart then failed with "Address already in use"
(seen in CI: a swtpm on port 46237). Outside the range only an explicit ``bind`` takes a
port. Where the range leaves no room outside it, the kernel's pick is used, as before.

``reserved_ports`` also locks the ports (an ``flock`` on an empty file a port, in a directory
of the user's under the temp directory) until it is released, so that the project's other
pickers (the other test workers, a demo) skip them even while their server is down;
``free_port`` skips reserved ports too. A released port's file is deleted.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from attestation.errors import AttestationError

__all__ = ["LOWEST_PORT", "Reservation", "ephemeral_range", "free_port", "reserved_ports"]

LOWEST_PORT = 10_000  # above the well-known ports and most services' registered ones
# one directory a user: a shared machine's other users cannot write into ours
_LOCKS = Path(tempfile.gettempdir()) / f"factoryops-ports-{os.getuid()}"
_TRIES = 200


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out for ``bind(0)`` and outgoing connections."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def _spans(count: int) -> list[range]:
    """Where ``count`` adjacent ports may start outside the ephemeral range."""
    lo, hi = ephemeral_range()
    spans = [range(LOWEST_PORT, lo - count + 1), range(hi + 1, 65_536 - count + 1)]
    return [span for span in spans if len(span)]


def _kernels_pick(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _lock(port: int) -> IO[bytes] | None:
    """The lock on ``port`` among this machine's pickers, or None if another holds it.

    A holder deletes its lock file before it lets go (``_unlock``), so the directory holds
    only the ports held now. The lock is ours only if the file is still the one at its path:
    one opened just before its holder deleted it locks a file nobody else will see."""
    _LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _LOCKS / f"{port}.lock"
    lock = path.open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(lock.fileno()).st_ino != path.stat().st_ino:
            raise BlockingIOError  # deleted by its last holder since we opened it
    except (BlockingIOError, FileNotFoundError):
        lock.close()
        return None
    return lock


def _unlock(lock: IO[bytes]) -> None:
    Path(lock.name).unlink(missing_ok=True)  # while still held: see ``_lock``
    lock.close()


@dataclass
class Reservation:
    """Ports ``port`` .. ``port + count - 1``, locked until ``release()``."""

    port: int
    _locks: list[IO[bytes]] = field(repr=False)

    def release(self) -> None:
        for lock in self._locks:
            _unlock(lock)
        self._locks.clear()


def _locked(port: int, count: int, host: str) -> Reservation | None:
    locks: list[IO[bytes]] = []
    for p in range(port, port + count):
        lock = _lock(p)
        if lock is not None:
            locks.append(lock)
        if lock is None or not _bindable(p, host):
            Reservation(port, locks).release()  # the ports locked so far
            return None
    return Reservation(port, locks)


def reserved_ports(count: int = 1, host: str = "127.0.0.1") -> Reservation:
    """``count`` adjacent ports free on ``host``, locked as this caller's until released.

    Outside the ephemeral range where there is room (below it on Linux's defaults); on a
    machine whose range leaves none, the kernel's pick, which a restart may find taken."""
    spans = _spans(count)
    pick = random.SystemRandom()
    for _ in range(_TRIES):
        if spans:
            span = pick.choices(spans, weights=[len(s) for s in spans])[0]
            port = pick.choice(span)
        else:
            port = _kernels_pick(host)
        if port + count <= 65_536 and (got := _locked(port, count, host)) is not None:
            return got
    raise AttestationError(
        f"no {count} adjacent free port(s) on {host} after {_TRIES} tries",
        hint="see net.ipv4.ip_local_port_range: ports outside it are picked first",
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on or has reserved now, outside the ephemeral range: for a server
    that must know its port before it starts, or a peer that is meant to be absent."""
    reservation = reserved_ports(1, host)
    reservation.release()
    return reservation.port
