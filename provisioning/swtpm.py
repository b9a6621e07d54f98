"""A SIMULATED TPM for tests and the demo: one ``swtpm socket`` process on free ports.

``SwtpmProcess(state_dir).start()`` gives ``.tcti`` for ``TpmSigner.open``; ``restart()``
power-cycles it (TPM Reset: resetCount changes), keeping its state and persistent keys.
"""

from __future__ import annotations

import fcntl
import random
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from provisioning.errors import ProvisioningError

__all__ = ["EkCa", "SwtpmProcess", "manufacture", "swtpm_available"]


def swtpm_available() -> bool:
    return shutil.which("swtpm") is not None


_PORT_LOCKS = Path(tempfile.gettempdir()) / "factoryops-swtpm-ports"
_LOWEST_PORT = 10_000  # above the well-known and most registered services' ports


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out for ``bind(0)`` and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reserve(port: int) -> IO[bytes] | None:
    """An exclusive lock on ``port`` among this machine's swtpm processes (every test
    worker's and the demo's), or None if another holds it; held while the file is open."""
    _PORT_LOCKS.mkdir(parents=True, exist_ok=True)
    lock = (_PORT_LOCKS / f"{port}.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def _reserved_port_pair() -> tuple[int, IO[bytes]]:
    """Two adjacent free ports for the TPM and its control channel, and the lock that keeps
    them this TPM's through a power cycle.

    They come from below the kernel's ephemeral range: a TPM that is power-cycled restarts
    on the same ports (its TCTI names them), and while it was off an ephemeral port could be
    given to any process's outgoing connection (seen in CI: "Address already in use" on
    restart, port 46237). Below the range only explicit binds take a port, and the lock
    keeps this project's other swtpm processes off it.
    """
    highest = _ephemeral_floor() - 2
    if highest < _LOWEST_PORT:
        raise ProvisioningError(
            f"no room for swtpm's ports below the ephemeral range (starts at {highest + 2})",
            hint="widen net.ipv4.ip_local_port_range's lower bound",
        )
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randint(_LOWEST_PORT, highest)
        lock = _reserve(port)
        if lock is None:
            continue
        if _bindable(port) and _bindable(port + 1):
            return port, lock
        lock.close()
    raise ProvisioningError(
        f"no two adjacent free ports for swtpm in {_LOWEST_PORT}-{highest + 1} (200 tries)"
    )


@dataclass(frozen=True, slots=True)
class EkCa:
    """A local, SIMULATED TPM maker's CA (swtpm_localca): what signs the swtpm EK certificates.

    A hub that should accept these TPMs trusts ``root_pem`` and ``issuer_pem`` as EK CAs.
    """

    directory: Path

    @property
    def root_pem(self) -> Path:
        return self.directory / "swtpm-localca-rootca-cert.pem"

    @property
    def issuer_pem(self) -> Path:
        return self.directory / "issuercert.pem"

    @property
    def cert_paths(self) -> tuple[Path, Path]:
        return (self.root_pem, self.issuer_pem)


def manufacture(state_dir: Path, ca: EkCa) -> None:
    """Make a SIMULATED TPM as a TPM maker would: EK + EK certificate signed by ``ca``.

    Runs ``swtpm_setup --create-ek-cert`` with its own config files (nothing under /etc or
    /var is used or changed). The CA is created on first use and shared by later calls.
    """
    exe = shutil.which("swtpm_setup")
    if exe is None:
        raise ProvisioningError("swtpm_setup is not installed", hint="apt install swtpm-tools")
    d = ca.directory
    d.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "localca.conf": f"statedir = {d}\nsigningkey = {d}/signkey.pem\n"
        f"issuercert = {d}/issuercert.pem\ncertserial = {d}/certserial\n",
        "localca.options": "--platform-manufacturer FactoryOps\n--platform-version 2.1\n"
        "--platform-model swtpm\n",
        "setup.conf": "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {d}/localca.conf\n"
        f"create_certs_tool_options = {d}/localca.options\nactive_pcr_banks = sha256\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    r = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [
            exe,
            "--tpm2",
            "--tpmstate",
            str(state_dir),
            "--create-ek-cert",
            "--overwrite",
            "--config",
            str(d / "setup.conf"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if r.returncode != 0:
        raise ProvisioningError(f"swtpm_setup failed: {(r.stderr or r.stdout).strip()[-300:]}")


@dataclass
class SwtpmProcess:
    state_dir: Path
    port: int = 0
    startup_timeout_s: float = 10.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    # the ports' reservation, released when the object goes: a restart finds them free
    _ports: weakref.finalize[[], SwtpmProcess] | None = field(default=None, init=False, repr=False)

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> SwtpmProcess:
        exe = shutil.which("swtpm")
        if exe is None:
            raise ProvisioningError("swtpm is not installed", hint="apt install swtpm swtpm-tools")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port, lock = _reserved_port_pair()
            self._ports = weakref.finalize(self, lock.close)
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [
                exe,
                "socket",
                "--tpm2",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--tpmstate",
                f"dir={self.state_dir}",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # its own session: a terminal's Ctrl-C (SIGINT to the foreground process group)
            # must not end the TPM under a demo that is still sealing its last window; the
            # owner stops it (stop(), or a test session's teardown)
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise ProvisioningError(f"swtpm exited at start: {err.strip()[:300]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ProvisioningError(f"swtpm did not listen on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None

    def restart(self) -> None:
        """Power-cycle the simulated TPM (a TPM Reset on the next startup)."""
        self.stop()
        self.start()

    def __enter__(self) -> SwtpmProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
