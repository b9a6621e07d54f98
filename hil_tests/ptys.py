"""A pair of connected pseudo-terminals from socat: a serial line on one machine, for rigs and
tests of serial protocols (line sensors, Modbus RTU) with a real tty on each side.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PtyPair", "socat_available"]


def socat_available() -> bool:
    return shutil.which("socat") is not None


@dataclass
class PtyPair:
    """``a`` and ``b`` are symlinks to two ptys joined by socat; ``stop`` unplugs the line."""

    directory: Path
    # b as a console: signals on (a Ctrl-C written on a reaches the program whose controlling
    # terminal b is as SIGINT, as a device's UART REPL interrupts), no output processing
    console_b: bool = False
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def a(self) -> Path:
        return self.directory / "tty-a"

    @property
    def b(self) -> Path:
        return self.directory / "tty-b"

    def start(self) -> PtyPair:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(  # noqa: S603 - socat from PATH, fixed argv, no shell
            [
                str(shutil.which("socat")),
                f"pty,raw,echo=0,link={self.a}",
                f"pty,echo=0,opost=0,link={self.b}"
                if self.console_b
                else f"pty,raw,echo=0,link={self.b}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (self.a.exists() and self.b.exists()):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
            self._proc = None
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)
