"""``factoryops demo`` explains itself: it announces the simulated plant's fault schedule, says
when a fault is running, and prints a verify command that works exactly as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from factoryops.demo import _plant_now, _schedule_lines
from hil_tests.plant import DEFAULT_FAULTS

ROOT = Path(__file__).resolve().parents[2]


def test_the_schedule_names_the_valve_fault_at_20_s() -> None:
    lines = _schedule_lines(DEFAULT_FAULTS)
    assert lines[0].strip() == "at 20 s the discharge valve starts closing for 40 s (plant fault)"
    assert len(lines) == len(DEFAULT_FAULTS)


@pytest.mark.parametrize(
    ("plant_s", "expected"),
    [
        (5.0, "normal operation; next fault in 15 s"),
        (25.0, "FAULT: the discharge valve starts closing, expect anomalies"),
        (290.0, "FAULT: the Pressure sensor spikes, expect anomalies"),
        (1000.0, "normal operation (the fault schedule is over)"),
    ],
)
def test_the_live_line_says_whether_anomalies_are_expected(plant_s: float, expected: str) -> None:
    assert _plant_now(DEFAULT_FAULTS, plant_s) == expected


def test_the_printed_verify_command_works_as_printed(tmp_path: Path) -> None:
    """Run the demo as a newcomer does (the console script of the project's environment,
    not on PATH), then paste the command it printed into a shell: the receipt is VALID."""
    script = Path(sys.executable).parent / "factoryops"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"  # as in a fresh shell: the project's venv is not on PATH
    # the demo itself runs as `make demo` runs it: `uv run` puts the venv on its PATH only
    demo_env = dict(env, PATH=f"{script.parent}:{env['PATH']}")
    env["COLUMNS"] = "400"  # rich wraps at the terminal's width; keep the command on one line
    demo = subprocess.run(
        [str(script), "demo", "--duration", "6", "--workdir", str(tmp_path / "work")],
        cwd=ROOT,
        env=demo_env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "at 20 s the discharge valve starts closing" in demo.stdout
    printed = [ln.strip() for ln in demo.stdout.splitlines() if " verify " in ln]
    assert len(printed) == 1, demo.stdout[-2000:]
    check = subprocess.run(
        printed[0], shell=True, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(r"\bVALID\b", check.stdout), check.stdout
