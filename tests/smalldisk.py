"""A real small disk for disk-full tests: a tmpfs mounted for the test (a true ENOSPC from
the kernel, not a simulated error) and a ballast file that fills it. Mounting needs root:
elsewhere the tests skip and say so (in CI they must run)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import missing

__all__ = ["fill", "small_disk_at"]


@contextmanager
def small_disk_at(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's form: ``1m``) mounted at ``mnt`` for the block."""
    mnt.mkdir()
    if os.geteuid() != 0:
        missing("mounting a small tmpfs for a disk-full test needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        missing(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave_bytes: int) -> Path:
    """Fill the disk to ENOSPC, then give ``leave_bytes`` back; deleting the file it returns
    is "space returns". Sizing the ballast from statvfs raced a running writer's own writes
    (on a slow machine its file grew past the margin and the ballast write hit ENOSPC)."""
    ballast = mnt / "ballast"
    with ballast.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    os.truncate(ballast, max(0, ballast.stat().st_size - leave_bytes))
    return ballast
