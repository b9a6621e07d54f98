"""The simulated TPM's ports: out of the kernel's ephemeral range, and reserved for its life.

A TPM power-cycled in a test restarts on the same ports (its TCTI names them). CI once
failed a restart with "Address already in use" on port 46237: while the TPM was off, the
kernel had given that ephemeral port to some other connection. Ports below the range are
never handed out implicitly, and the lock keeps the project's other TPMs off them.
"""

from __future__ import annotations

import gc
from pathlib import Path

from provisioning import swtpm
from tests.conftest import missing


def test_the_ports_are_below_the_ephemeral_range_and_both_free() -> None:
    floor = swtpm._ephemeral_floor()
    for _ in range(20):
        port, lock = swtpm._reserved_port_pair()
        try:
            assert swtpm._LOWEST_PORT <= port < port + 1 < floor
            assert swtpm._bindable(port)
            assert swtpm._bindable(port + 1)
        finally:
            lock.close()


def test_a_reserved_port_is_not_given_to_another_tpm_until_released() -> None:
    port, lock = swtpm._reserved_port_pair()
    try:
        assert swtpm._reserve(port) is None  # another TPM's pick skips it
    finally:
        lock.close()
    again = swtpm._reserve(port)
    assert again is not None  # released with its owner
    again.close()


def test_a_stopped_tpm_keeps_its_ports_until_it_is_gone(tmp_path: Path) -> None:
    if not swtpm.swtpm_available():
        missing("swtpm is not installed (apt install swtpm swtpm-tools)")
    tpm = swtpm.SwtpmProcess(tmp_path).start()
    port = tpm.port
    tpm.stop()
    assert swtpm._reserve(port) is None  # kept for the restart
    tpm.start()
    assert tpm.port == port
    tpm.stop()
    del tpm
    gc.collect()
    again = swtpm._reserve(port)
    assert again is not None  # released with the object
    again.close()
