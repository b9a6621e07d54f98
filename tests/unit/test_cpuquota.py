"""``benchmarks.cpuquota``: a real control group holds a real process, and is gone after.

Needs write access to the cgroup hierarchy (root, as in CI); elsewhere it skips and says
why. Nothing here times anything: the kernel's enforcement of the quota is what ``bench
fleet``'s half-CPU rounds show (docs/performance.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cpuquota import CpuQuota, QuotaUnavailable
from tests.conftest import missing


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process that waits on its stdin until the test ends."""
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as proc:
        yield proc
        proc.kill()


def _group(name: str, share: float) -> CpuQuota:
    try:
        return CpuQuota.make(name, share)
    except QuotaUnavailable as why:
        missing(f"a writable cgroup CPU controller: {why}")
        raise  # unreachable: missing() skips or fails


def test_a_group_holds_a_process_at_its_quota_and_gives_it_back(
    child: subprocess.Popen[bytes],
) -> None:
    group = _group(f"factoryops-test-{os.getpid()}", 0.25)
    try:
        quota = (group.path / "cpu.max") if group.v2 else (group.path / "cpu.cfs_quota_us")
        assert quota.read_text().split()[0] == "2500"  # 0.25 of a 10 ms period
        group.add(child.pid)
        assert group.pids() == [child.pid]
        assert group.path.name in Path(f"/proc/{child.pid}/cgroup").read_text()
    finally:
        group.remove()
    assert not group.path.exists()
    assert child.poll() is None  # released, not killed
    assert f"factoryops-test-{os.getpid()}" not in Path(f"/proc/{child.pid}/cgroup").read_text()


def test_a_group_left_by_a_crashed_run_is_made_fresh(child: subprocess.Popen[bytes]) -> None:
    name = f"factoryops-test-left-{os.getpid()}"
    left = _group(name, 1.0)
    left.add(child.pid)  # as a run killed before its cleanup leaves it
    again = CpuQuota.make(name, 0.5)
    try:
        assert again.path == left.path
        assert again.pids() == []  # the old member was released, the group made anew
        assert child.poll() is None
    finally:
        again.remove()


@pytest.mark.parametrize("share", [0.0, -1.0, 65.0])
def test_a_share_outside_what_a_machine_could_give_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="CPU share"):
        CpuQuota.make("factoryops-never-made", share)


def test_a_hierarchy_without_a_cpu_controller_is_named(tmp_path: Path) -> None:
    with pytest.raises(QuotaUnavailable, match="no cgroup CPU controller"):
        CpuQuota.make("x", 0.5, root=tmp_path)
