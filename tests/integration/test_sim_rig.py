"""HIL rigs and the ``sim`` CLI against the SIMULATED plant, with real pymodbus peers.

The example rig injects a plant fault and three Modbus transport faults (exception code,
dropped server, slow answers) and its probe must see each of them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from factoryops.cli import cli
from hil_tests.rig import load_rig
from hil_tests.rig_runner import run_rig

EXAMPLE = Path(__file__).resolve().parents[2] / "hil_tests" / "rigs" / "pump_faults.toml"


@pytest.mark.hil
async def test_the_example_rig_sees_every_injected_fault() -> None:
    report = await run_rig(load_rig(EXAMPLE))
    failed = [f"{v.name}: {v.detail}" for v in report.verdicts if not v.passed]
    assert not failed
    assert 0 < report.failed_reads < report.reads


@pytest.mark.hil
async def test_a_rig_whose_expectation_cannot_hold_fails_with_the_reason(tmp_path: Path) -> None:
    rig = tmp_path / "wrong.toml"
    rig.write_text(
        '[plant]\nspeed = 20.0\nperiod_s = 0.05\nduration_s = 10.0\nfaults = "none"\n'
        '[[expect]]\nname = "a healthy plant fails reads"\nkind = "reads_fail"\n'
        "window = [1, 9]\n",
        encoding="utf-8",
    )
    report = await run_rig(load_rig(rig))
    (verdict,) = report.verdicts
    assert not report.passed and "0% of" in verdict.detail


def test_sim_plant_prints_what_it_serves_and_stops_after_its_duration() -> None:
    result = CliRunner().invoke(
        cli, ["sim", "plant", "--modbus-port", "0", "--faults", "none", "--duration", "0.3"]
    )
    assert result.exit_code == 0, result.output
    assert "SIMULATED plant" in result.output
    assert "Modbus TCP  127.0.0.1:" in result.output
    assert "Volume Flow RateRMS [l/min]" in result.output


def test_hil_run_on_a_bad_rig_exits_nonzero_naming_the_key(tmp_path: Path) -> None:
    rig = tmp_path / "bad.toml"
    rig.write_text('[[expect]]\nkind = "reads_ok"\nwindow = [3, 1]\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["hil", "run", str(rig)])
    assert result.exit_code != 0
    assert "expect[0].window" in str(result.exception)


@pytest.mark.hil
@pytest.mark.parametrize("end_s", [2.0, 2.3, 2.6, 2.9, 3.2])
async def test_a_rig_ends_while_its_probe_reconnects_to_a_dropped_plc(
    tmp_path: Path, end_s: float
) -> None:
    """The rig's end cancels its probe; a probe that is connecting then (the PLC dropped
    until past the end) must stop. pymodbus's ``connect()`` can swallow that cancellation
    (cpython gh-86296): the probe looped for ever and this rig never returned (CI, 2026-12-03,
    the example rig, timeout after 300 s). Several end times move the cancellation around."""
    rig = tmp_path / "dropped.toml"
    rig.write_text(
        f'[plant]\nspeed = 10.0\nperiod_s = 0.05\nduration_s = {end_s * 10}\nfaults = "none"\n'
        "[probe]\npoll_ms = 5\ntimeout_ms = 50\n"
        '[[transport]]\nkind = "drop"\nstart_s = 5\nduration_s = 1000\n'
        '[[expect]]\nname = "reads fail while dropped"\nkind = "reads_fail"\n'
        f"window = [8, {end_s * 10 - 1}]\n",
        encoding="utf-8",
    )
    async with asyncio.timeout(30):  # the rig takes end_s wall seconds
        report = await run_rig(load_rig(rig))
    assert report.passed, report.verdicts
