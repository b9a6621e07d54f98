"""The benchmarks' server processes say which server failed to start, and how."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from benchmarks.hub import ServedProcess, process_cpu_seconds


def test_a_server_that_exits_at_start_is_named_with_its_status_and_stderr(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "json.tool", "--no-such-option"]
    with pytest.raises(click.ClickException) as err:
        ServedProcess(argv, tmp_path, {})
    message = err.value.message
    assert message.startswith("json.tool --no-such-option exited with status 2;"), message
    assert "error:" in message  # the end of its stderr: argparse's complaint


_BURNS_IN_A_THREAD = """
import sys, threading, time

def burn():
    spent = time.thread_time() + 0.05
    while time.thread_time() < spent:
        pass
    print(time.thread_time(), flush=True)

t = threading.Thread(target=burn)
t.start()
t.join()
sys.stdin.readline()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="process CPU clocks are read on Linux")
def test_a_process_cpu_counts_its_ended_threads_to_the_nanosecond() -> None:
    """The hub's CPU a proof is this reading over a run: it must hold the time of threads
    that have ended, and finer than /proc's 10 ms ticks (a run of ~0.3 s read to ±3 %)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _BURNS_IN_A_THREAD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        burned = float(child.stdout.readline())  # the thread's own CPU, then it ended
        first = process_cpu_seconds(child.pid)
        second = process_cpu_seconds(child.pid)
    finally:
        child.communicate("\n")
    assert first is not None and second is not None
    assert first >= burned  # the ended thread's time is in it
    assert second >= first
    assert round(first * 1e9) % 10_000_000 != 0  # not a whole number of ticks
    assert process_cpu_seconds(child.pid) is None  # reaped: nothing to read
