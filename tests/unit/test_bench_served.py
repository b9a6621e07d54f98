"""The benchmarks' server processes say which server failed to start, and how."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

from benchmarks.hub import ServedProcess


def test_a_server_that_exits_at_start_is_named_with_its_status_and_stderr(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "json.tool", "--no-such-option"]
    with pytest.raises(click.ClickException) as err:
        ServedProcess(argv, tmp_path, {})
    message = err.value.message
    assert message.startswith("json.tool --no-such-option exited with status 2;"), message
    assert "error:" in message  # the end of its stderr: argparse's complaint
