"""Ports for the servers the project starts: below the ephemeral range, reservable.

Servers here are stopped and started again on the same port. CI once failed a simulated
TPM's restart with "Address already in use" on port 46237: while the TPM was off, the
kernel had given that ephemeral port to some other connection. Below the range ports are
never handed out implicitly, and a reservation keeps the project's other pickers off them.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from attestation import localports
from provisioning.swtpm import SwtpmProcess, swtpm_available
from tests.conftest import missing


def test_ports_are_below_the_ephemeral_range_and_free() -> None:
    floor = localports.ephemeral_floor()
    for _ in range(20):
        got = localports.reserved_ports(2)
        try:
            assert localports.LOWEST_PORT <= got.port < got.port + 1 < floor
            assert all(localports._bindable(p, "127.0.0.1") for p in (got.port, got.port + 1))
        finally:
            got.release()
        assert localports.LOWEST_PORT <= localports.free_port() < floor


def test_every_port_of_a_reservation_is_skipped_until_it_is_released() -> None:
    got = localports.reserved_ports(2)
    try:
        for p in (got.port, got.port + 1):
            assert localports._lock(p) is None  # another picker's try fails
    finally:
        got.release()
    for p in (got.port, got.port + 1):
        assert not (localports._LOCKS / f"{p}.lock").exists()  # nothing left behind
        lock = localports._lock(p)
        assert lock is not None
        localports._unlock(lock)


def test_a_lock_file_deleted_by_its_last_holder_is_not_a_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A picker that opened the file just before its holder let go (and deleted it) would
    lock a file nobody else sees: it must count the port as taken, never as its own."""
    got = localports.reserved_ports(1)
    path = localports._LOCKS / f"{got.port}.lock"
    stale = path.open("ab")  # opened while the holder still has it
    real_open = Path.open

    def open_the_stale_one(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            got.release()  # the holder lets go between our open and our flock
            return stale
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]  # Path.open's overloads

    monkeypatch.setattr(Path, "open", open_the_stale_one)
    assert localports._lock(got.port) is None
    assert stale.closed


def test_a_stopped_tpm_keeps_its_ports_until_it_is_gone(tmp_path: Path) -> None:
    if not swtpm_available():
        missing("swtpm is not installed (apt install swtpm swtpm-tools)")
    tpm = SwtpmProcess(tmp_path).start()
    port = tpm.port
    tpm.stop()
    assert localports._lock(port) is None  # kept for the restart
    tpm.start()
    assert tpm.port == port
    tpm.stop()
    del tpm
    gc.collect()
    again = localports._lock(port)
    assert again is not None  # released with the object
    localports._unlock(again)
