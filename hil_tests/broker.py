"""A private Mosquitto for rigs and tests that stop and restart the broker (the shared one on
:1883 belongs to everyone). Real broker process, persistence on, loopback only.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from attestation.localports import free_port

__all__ = ["Mosquitto", "mosquitto_available"]

MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto_available() -> bool:
    return Path(MOSQUITTO).exists() or shutil.which("mosquitto") is not None


@dataclass
class Mosquitto:
    state_dir: Path
    port: int = field(default_factory=free_port)
    # the listener's own lines (TLS files, password_file, allow_anonymous): open by default
    listener: str = "allow_anonymous true\n"
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n{self.listener}"
            f"persistence true\npersistence_location {self.state_dir}/\n"
            "autosave_interval 1\n"
            # started as root, mosquitto drops to user "mosquitto", which cannot write into a
            # root-owned tmp_path: persistence then fails silently (ignored when not root)
            "user root\n"
        )
        exe = MOSQUITTO if Path(MOSQUITTO).exists() else str(shutil.which("mosquitto"))
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [exe, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a rig's Ctrl-C is ours to handle, not the broker's
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self, *, hard: bool = False) -> None:
        """Stop the broker: SIGTERM saves its state; ``hard`` is a kill -9."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        self._proc.wait(timeout=10)
        self._proc = None
