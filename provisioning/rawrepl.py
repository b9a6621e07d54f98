"""The MicroPython raw REPL over a serial port: enter it, run code, read its output and error.

The protocol (MicroPython docs, "raw REPL"; mpremote's transport_serial does the same):
Ctrl-C twice stops whatever runs, Ctrl-A enters the raw REPL (banner ending in ``>``), the
code is sent and Ctrl-D runs it; the node answers ``OK``, the output, ``\\x04``, the error
text, ``\\x04`` and ``>``. Ctrl-B leaves. Code sent here may hold secrets, so it is never
logged and never part of an error message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType

import serial

from provisioning.errors import ProvisioningError

__all__ = ["NodeAnsweredError", "RawRepl", "ReplUnavailable"]

CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"
BANNER = b"raw REPL; CTRL-B to exit\r\n>"
MAX_ANSWER_BYTES = 64 * 1024  # a provisioning step prints a line; more is a runaway program


class ReplUnavailable(ProvisioningError):
    """The port cannot be opened, is in use, or nothing answers with a MicroPython REPL."""


class NodeAnsweredError(ProvisioningError):
    """The node ran the step and raised; ``error`` is its last traceback line."""

    def __init__(self, port: str, error: str) -> None:
        super().__init__(
            f"the node on {port} answered with an error: {error}",
            hint="check the node's flash has room and is writable (os.statvfs('/')), "
            "or erase and reflash MicroPython, then run the command again",
        )
        self.error = error


def _open(port: str, baudrate: int, timeout_s: float) -> serial.Serial:
    try:
        # exclusive: flock the tty, so a second program (a terminal, mpremote) is "busy"
        return serial.Serial(port, baudrate, timeout=timeout_s, exclusive=True)
    except serial.SerialException as err:
        text = str(err)
        if "lock" in text.lower() or "busy" in text.lower():
            raise ReplUnavailable(
                f"{port} is busy: another program holds it",
                hint=f"close the terminal or mpremote using it (fuser -v {port}), then retry",
            ) from err
        raise ReplUnavailable(
            f"cannot open {port}: {text.split(': ', 1)[-1]}",
            hint="check the cable and the device path (ls /dev/serial/by-id/); "
            "add yourself to the dialout group if permission is denied",
        ) from err


@dataclass
class RawRepl:
    """One raw-REPL session on ``port``; use as a context manager."""

    port: str
    baudrate: int = 115_200
    timeout_s: float = 5.0
    _serial: serial.Serial | None = None

    def __enter__(self) -> RawRepl:
        self._serial = _open(self.port, self.baudrate, self.timeout_s)
        try:
            self._enter()
        except BaseException:
            self._serial.close()
            self._serial = None
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._serial is not None:
            try:
                self._serial.write(b"\r" + CTRL_B)  # back to the friendly REPL
                self._serial.flush()
            except serial.SerialException:
                pass  # the port went away; closing is all that is left
            self._serial.close()
            self._serial = None

    def _enter(self) -> None:
        s = self._port()
        s.write(b"\r" + CTRL_C + CTRL_C)  # stop the node's main loop, if it runs one
        time.sleep(0.1)  # let the interrupt's traceback arrive before it is discarded
        s.reset_input_buffer()
        s.write(b"\r" + CTRL_A)
        self._read_until(BANNER, "the raw REPL banner")

    def _port(self) -> serial.Serial:
        if self._serial is None:
            raise RuntimeError("RawRepl used outside its with block")  # our bug
        return self._serial

    def _read_until(self, marker: bytes, what: str) -> bytes:
        s = self._port()
        data = b""
        deadline = time.monotonic() + self.timeout_s
        while not data.endswith(marker):
            if len(data) > MAX_ANSWER_BYTES:
                raise ReplUnavailable(
                    f"{self.port}: more than {MAX_ANSWER_BYTES} bytes before {what}",
                    hint="reset the node (press EN/RST) and retry",
                )
            if time.monotonic() > deadline:
                raise ReplUnavailable(
                    f"no MicroPython REPL answered on {self.port} ({what} did not come "
                    f"within {self.timeout_s:g} s)",
                    hint="check it is the node's port and MicroPython is flashed "
                    "(mpremote connect PORT repl shows a >>> prompt); then retry",
                )
            data += s.read(1)
        return data[: -len(marker)]

    def launch(self, code: str) -> None:
        """Start ``code`` on the node and return once the raw REPL accepted it, without
        waiting for it to end (a firmware main loop never does); the next session's Ctrl-C
        stops it."""
        s = self._send(code)
        self._serial = None  # the program owns the line now: no Ctrl-B on the way out
        s.close()

    def _send(self, code: str) -> serial.Serial:
        s = self._port()
        s.write(code.encode())
        s.write(CTRL_D)
        head = s.read(2)
        if head != b"OK":
            raise ReplUnavailable(
                f"{self.port}: the raw REPL did not accept the code (answered {head!r})",
                hint="reset the node and retry; if it persists, reflash MicroPython",
            )
        return s

    def run(self, code: str) -> str:
        """Run ``code`` on the node; its printed output. A node-side exception raises
        ``NodeAnsweredError`` with the exception's last line (never the code)."""
        self._send(code)
        out = self._read_until(CTRL_D, "the end of the output")
        err = self._read_until(CTRL_D, "the end of the error text")
        self._read_until(b">", "the prompt")
        if err.strip():
            lines = err.decode(errors="replace").strip().splitlines()
            raise NodeAnsweredError(self.port, lines[-1] if lines else "unknown error")
        return out.decode(errors="replace")
