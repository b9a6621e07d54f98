"""Ports for the servers the project starts: below the ephemeral range, reservable.

Servers here are stopped and started again on the same port. CI once failed a simulated
TPM's restart with "Address already in use" on port 46237: while the TPM was off, the
kernel had given that ephemeral port to some other connection. Below the range ports are
never handed out implicitly, and a reservation keeps the project's other pickers off them.
"""

from __future__ import annotations

import gc
from pathlib import Path

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
        lock = localports._lock(p)
        assert lock is not None
        lock.close()


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
    again.close()
