"""A SQLite hub's window leaves, in one append-only file beside its database (ADR 0053).

A window's leaves are a ~28 KB blob written once and never changed. Inside SQLite each was
written twice (a WAL frame a page, then the checkpoint's copy into the database) with a
random-key index page beside it: ~100 µs of the writer's CPU a proof, ~1/8 of a saturated
hub's (docs/performance.md). Here a group commit's leaves are one write at the end of
``<database>-leaves`` and one ``fdatasync``, before the transaction that records where they
are (``windows.leaves_offset`` and ``leaves_length``) commits: a committed window's leaves
are on disk, and a crash between the two leaves only unreferenced bytes at the end, which
nothing reads. PostgreSQL hubs keep the leaves in ``window_leaves``: replicas on other
machines share the database, not a file.

Appends take an exclusive ``flock`` on the file and write at its current end, so two
processes on one database (a hub and a maintenance command, or a second hub by mistake)
never write the same bytes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LeafFile", "LeavesMissing", "leaf_file_of"]


class LeavesMissing(RuntimeError):
    """The database says where a window's leaves are, and the file does not hold them."""


def leaf_file_of(database: Path) -> Path:
    """The leaves file of a SQLite database file (beside it, as its ``-wal`` is)."""
    return database.with_name(database.name + "-leaves")


class LeafFile:
    """Appends blobs durably and reads them back by (offset, length)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, blobs: Sequence[bytes]) -> list[int]:
        """Write ``blobs`` back to back at the end of the file and make them durable; returns
        each one's offset. Raises ``OSError`` (a full disk, say) with nothing referenced."""
        if not blobs:
            return []
        data = b"".join(blobs)
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close
            at = os.fstat(fd).st_size
            written = 0
            while written < len(data):  # a short write goes on where it stopped
                written += os.pwrite(fd, memoryview(data)[written:], at + written)
            os.fdatasync(fd)  # the data and the new size, before any row points at them
        finally:
            os.close(fd)
        offsets = []
        for blob in blobs:
            offsets.append(at)
            at += len(blob)
        return offsets

    def _open(self) -> int:
        """The file open for writing; made (0600) on first use, and then its directory entry
        synced too, so a power loss cannot lose the file that committed rows point into."""
        flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return os.open(self.path, flags)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return fd

    def read(self, offset: int, length: int) -> bytes:
        """The ``length`` bytes at ``offset``; ``LeavesMissing`` when the file has fewer."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise LeavesMissing(f"{self.path} is missing: restore it with its database") from err
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise LeavesMissing(
                f"{self.path} ends before bytes {offset}..{offset + length} that the database"
                " lists: it was cut short or restored without its database"
            )
        return data
