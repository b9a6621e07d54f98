"""``factoryops demo`` explains itself: it announces the simulated plant's fault schedule, says
when a fault is running, and prints a verify command that works exactly as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.inference import OnnxScorer
from attestation.reading import Reading
from factoryops.demo import SETTLED_C, _plant_now, _schedule_lines
from hil_tests.plant import DEFAULT_FAULTS, SIGNALS, PumpPlant
from hil_tests.training import as_served, simulated_normal
from models_onnx.recipes import Recipe, build

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


@pytest.mark.parametrize(
    ("plant_s", "expected"),
    [
        (300.0, "; next fault in 5 s"),
        (1000.0, ""),
    ],
)
def test_a_housing_still_cooling_after_a_fault_is_announced(plant_s: float, expected: str) -> None:
    line = _plant_now(DEFAULT_FAULTS, plant_s, housing_excess_c=4.25)
    assert line == (
        "recovering: the motor housing is 4.2 °C above its steady temperature and cooling"
        " (a 2-minute lag), expect anomalies until it settles" + expected
    )


def test_after_the_faults_the_twin_alarms_while_the_line_says_recovering_and_not_after(
    tmp_path: Path,
) -> None:
    """The demo's own model (its recipe, trained as the demo trains it) over the demo's fault
    schedule: once the faults are over, its alarms belong to the housing that bearing wear
    heated and that cools back for minutes. The live line calls that time "recovering"; when
    it says "normal operation" the model is quiet. (Before the line knew the housing's state it
    said "normal operation" from 380 s on while every row alarmed until ~720 s.)"""
    signals, x = simulated_normal(600)
    build(Recipe(), x, signals, tmp_path, model_id="pump-twin")
    scorer = OnnxScorer.open(tmp_path / "pump-twin.fp32.manifest.json")
    plant = PumpPlant(seed=11, faults=DEFAULT_FAULTS)
    names, seq, rows = list(SIGNALS), 0, 50
    windows: dict[str, list[int]] = {"recovering": [], "normal": []}  # anomalous rows a window
    over = max(f.start_s + f.duration_s for f in DEFAULT_FAULTS)
    while plant.t < 1200:
        readings = []
        for _ in range(rows):
            values = as_served(plant.step(0.1))
            for name, v in zip(names, values, strict=True):
                readings.append(Reading(seq, int(plant.t * 1e9), name, v, SIGNALS[name]))
                seq += 1
        alarms = scorer.score_window(readings).anomaly.count
        if plant.t > over + 5:  # the sensor drift's smoothing has passed
            line = _plant_now(DEFAULT_FAULTS, plant.t, plant.housing_excess_c)
            windows["recovering" if line.startswith("recovering") else "normal"].append(alarms)
    recovering, normal = windows["recovering"], windows["normal"]
    assert len(recovering) > 40, "the housing should take minutes to settle"
    assert sum(1 for a in recovering if a) >= 0.9 * len(recovering), recovering
    assert sum(normal) <= 0.01 * rows * len(normal), normal
    assert plant.housing_excess_c < SETTLED_C


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
