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

A group of at least ``DIRECT_FROM`` bytes (a busy hub's: ~30 windows of 28 KB at 20,000
gateways) is written past the page cache (``O_DIRECT``): its blobs are copied once into an
aligned buffer padded with zeros and written from a multiple of ``ALIGN`` (4 KiB), so the kernel
neither copies the leaves into cached pages nor writes those back at the sync, ~25 µs of a
saturated hub's writer a proof (docs/performance.md, ADR 0053). Smaller groups (a quiet hub
commits its windows one at a time) go through the page cache, back to back, so the padding
never costs more than 1/16 of what a write holds. The aligned buffer is kept between groups
(up to ``KEEP_BUFFER`` bytes; a larger group gets one of its own): a fresh anonymous map
faults in and zeroes every page it is given, 23-25 µs of CPU a 28 KB window on a VM where
the copy into a kept one takes ~1 µs. A file system that refuses ``O_DIRECT``
(tmpfs before Linux 6.6) gets every group through the page cache. Reads go through the page
cache either way; the kernel keeps the two coherent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["ALIGN", "DIRECT_FROM", "KEEP_BUFFER", "LeafFile", "LeavesMissing", "leaf_file_of"]

ALIGN = 4096
"""A direct write starts at a multiple of this: the largest logical block size of the disks a
hub runs on, as ``O_DIRECT`` needs for the offset, the length and the buffer's address."""
DIRECT_FROM = 16 * ALIGN
"""Groups of at least this many bytes bypass the page cache (the padding: at most 1/16)."""
KEEP_BUFFER = 16 * 1024 * 1024
"""The largest aligned buffer kept between direct writes (a saturated hub's groups are
1-6 MB); a larger group's buffer is mapped for it and let go after."""


class LeavesMissing(RuntimeError):
    """The database says where a window's leaves are, and the file does not hold them."""


def leaf_file_of(database: Path) -> Path:
    """The leaves file of a SQLite database file (beside it, as its ``-wal`` is)."""
    return database.with_name(database.name + "-leaves")


class LeafFile:
    """Appends blobs durably and reads them back by (offset, length)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.direct: bool | None = None  # O_DIRECT: None until the first large append tries
        self._buffer: mmap.mmap | None = None  # the aligned buffer kept for direct writes
        self._buffer_lock = threading.Lock()  # one direct write at a time uses it

    def append(self, blobs: Sequence[bytes]) -> list[int]:
        """Write ``blobs`` back to back at the file's end (a direct write: from the first
        multiple of ``ALIGN`` there) and make them durable; returns each one's offset. Raises
        ``OSError`` (a full disk, say) with nothing referenced."""
        if not blobs:
            return []
        size = sum(len(b) for b in blobs)
        fd, direct = self._open(size >= DIRECT_FROM)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close
            end = os.fstat(fd).st_size
            at = _aligned(end) if direct else end
            if direct:
                with self._aligned_buffer(size) as buffer:
                    _write_direct(fd, buffer, blobs, size, at)
            else:
                _write_all(fd, memoryview(b"".join(blobs)), at)
            os.fdatasync(fd)  # the data and the new size, before any row points at them
        finally:
            os.close(fd)
        offsets = []
        for blob in blobs:
            offsets.append(at)
            at += len(blob)
        return offsets

    @contextlib.contextmanager
    def _aligned_buffer(self, size: int) -> Iterator[mmap.mmap]:
        """A page-aligned buffer of at least ``_aligned(size)`` bytes: the kept one (grown to
        fit, up to ``KEEP_BUFFER``), or one mapped for this write alone."""
        need = _aligned(size)
        if need > KEEP_BUFFER:
            with mmap.mmap(-1, need) as alone:
                yield alone
            return
        with self._buffer_lock:
            if self._buffer is None or len(self._buffer) < need:
                if self._buffer is not None:
                    self._buffer.close()
                # grown in powers of two: a hub's group sizes settle after a few resizes
                self._buffer = mmap.mmap(-1, min(KEEP_BUFFER, 1 << (need - 1).bit_length()))
            yield self._buffer

    def close(self) -> None:
        """Let the kept buffer go (a later direct write maps a new one)."""
        with self._buffer_lock:
            if self._buffer is not None:
                self._buffer.close()
                self._buffer = None

    def _open(self, want_direct: bool) -> tuple[int, bool]:
        """The file open for writing, and whether with ``O_DIRECT`` (wanted, and not refused
        by this file system before); made first if it is not there."""
        while True:
            direct = want_direct and self.direct is not False
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))
            except FileNotFoundError:
                self._create()
                continue
            except OSError as err:
                if not direct or err.errno != errno.EINVAL:
                    raise
                self.direct = False  # no O_DIRECT on this file system: the page cache it is
                continue
            if direct:
                self.direct = True
            return fd, direct

    def _create(self) -> None:
        """Make the file (0600) and sync its directory entry, so a power loss cannot lose
        the file that committed rows point into (another process that made it first did)."""
        with contextlib.suppress(FileExistsError):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            os.close(os.open(self.path, flags, 0o600))
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

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


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _write_all(fd: int, data: memoryview, at: int) -> None:
    written = 0
    while written < len(data):  # a short write goes on where it stopped
        written += os.pwrite(fd, data[written:], at + written)


def _write_direct(fd: int, buffer: mmap.mmap, blobs: Sequence[bytes], size: int, at: int) -> None:
    """``blobs`` (``size`` bytes, at least ``DIRECT_FROM``) back to back at ``at`` through
    ``O_DIRECT``: copied into ``buffer`` (page-aligned, an anonymous map, maybe holding an
    earlier group) and padded with zeros to a multiple of ``ALIGN``."""
    end = _aligned(size)
    pos = 0
    for blob in blobs:
        buffer[pos : pos + len(blob)] = blob
        pos += len(blob)
    buffer[size:end] = bytes(end - size)  # not an earlier group's bytes in the padding
    with memoryview(buffer) as whole, whole[:end] as view:
        _write_all(fd, view, at)
