"""A process held to a share of one CPU by a Linux control group's CPU quota (benchmarks only).

``bench fleet`` uses it to give each hub replica the same CPU whether one or two of them
run, as replicas on machines of their own would have: on a 2-CPU machine that also runs
PostgreSQL and the load generator, two unconfined hubs run out of CPUs before they can show
how replicas scale (ADR 0054). The kernel's CFS bandwidth control enforces the quota: a
group may run ``share`` x ``period`` of CPU time in each period, over all its threads.

Both cgroup layouts are handled: v2 (``cpu.max`` in the unified hierarchy) and v1 (the
``cpu`` controller's ``cpu.cfs_quota_us``). Making a group needs write access to the
hierarchy (root, or a delegated subtree); without it ``CpuQuota.make`` says why and the
caller reports the figure as not measured.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["CpuQuota", "QuotaUnavailable"]

_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 10_000  # short periods: a throttled server stalls for milliseconds, not 100 ms


class QuotaUnavailable(RuntimeError):
    """No CPU controller this process may write to."""


class CpuQuota:
    """One control group whose processes share ``share`` of one CPU."""

    def __init__(self, path: Path, v2: bool) -> None:
        self.path, self.v2 = path, v2

    @classmethod
    def make(cls, name: str, share: float, root: Path = _ROOT) -> CpuQuota:
        """A fresh group ``name`` (removed first if a crashed run left it) held to ``share``."""
        if not 0 < share <= 64:
            raise ValueError(f"a CPU share is in (0, 64], not {share}")
        quota = max(1000, round(share * _PERIOD_US))  # the kernel's least quota is 1 ms
        if "cpu" in _read(root / "cgroup.controllers").split():  # v2
            group = cls(root / name, v2=True)
            group._fresh()
            _write(root / "cgroup.subtree_control", "+cpu")
            _write(group.path / "cpu.max", f"{quota} {_PERIOD_US}")
        elif (root / "cpu" / "cpu.cfs_quota_us").exists():  # v1
            group = cls(root / "cpu" / name, v2=False)
            group._fresh()
            _write(group.path / "cpu.cfs_period_us", str(_PERIOD_US))
            _write(group.path / "cpu.cfs_quota_us", str(quota))
        else:
            raise QuotaUnavailable(f"no cgroup CPU controller under {root}")
        return group

    def _fresh(self) -> None:
        self.remove()
        try:
            self.path.mkdir()
        except OSError as err:
            raise QuotaUnavailable(f"cannot make {self.path}: {err.strerror}") from err

    def add(self, pid: int) -> None:
        """Move process ``pid`` (every thread of it, and the threads it starts later) in."""
        _write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in _read(self.path / "cgroup.procs").split()]

    def release(self) -> None:
        """Move every process of the group back to the hierarchy's root (no quota)."""
        parent = self.path.parent / "cgroup.procs"
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                _write(parent, str(pid))

    def remove(self) -> None:
        """Release the processes and delete the group (nothing to do if it does not exist)."""
        if not self.path.is_dir():
            return
        self.release()
        self.path.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as err:
        raise QuotaUnavailable(f"cannot write {path}: {err.strerror}") from err
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
