"""Ports for the servers the project starts: outside the ephemeral range, reservable.

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


def _outside(port: int) -> bool:
    lo, hi = localports.ephemeral_range()
    return port >= localports.LOWEST_PORT and not lo <= port <= hi


def test_ports_are_outside_the_ephemeral_range_and_free() -> None:
    for _ in range(20):
        got = localports.reserved_ports(2)
        try:
            assert _outside(got.port)
            assert _outside(got.port + 1)
            assert all(localports._bindable(p, "127.0.0.1") for p in (got.port, got.port + 1))
        finally:
            got.release()
        assert _outside(localports.free_port())


@pytest.mark.parametrize(
    ("ephemeral", "where"),
    [
        # Linux's default: below it, or the few above it
        ((32_768, 60_999), (range(10_000, 32_768), range(61_000, 65_536))),
        ((1_024, 49_999), (range(50_000, 65_536),)),  # no room below: above it
        ((1_024, 65_535), (range(1_024, 65_536),)),  # none outside: the kernel's own pick
    ],
)
def test_the_span_follows_the_machines_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch, ephemeral: tuple[int, int], where: tuple[range, ...]
) -> None:
    monkeypatch.setattr(localports, "ephemeral_range", lambda: ephemeral)
    for _ in range(10):
        got = localports.reserved_ports(2)
        got.release()
        assert any(got.port in span and got.port + 1 in span for span in where)


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
