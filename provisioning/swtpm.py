"""A SIMULATED TPM for tests and the demo: one ``swtpm socket`` process on free ports.

``SwtpmProcess(state_dir).start()`` gives ``.tcti`` for ``TpmSigner.open``; ``restart()``
power-cycles it (TPM Reset: resetCount changes), keeping its state and persistent keys.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from attestation.localports import reserved_ports
from provisioning.errors import ProvisioningError

__all__ = ["EkCa", "SwtpmProcess", "manufacture", "swtpm_available"]


def swtpm_available() -> bool:
    return shutil.which("swtpm") is not None


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
            # outside the ephemeral range, and kept for a restart (attestation/localports.py)
            ports = reserved_ports(2)  # the TPM's and its control channel's
            self.port = ports.port
            self._ports = weakref.finalize(self, ports.release)
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
