"""Every rig of the library passes, as CI runs it: each system rig brings up the real agent
with the SIMULATED PLC, firmware nodes and a private broker, injects its fault class and
judges its checks (eleven rigs, about seven minutes together on one pytest worker). Only the
1,000-kill soak rig (about 50 minutes) is left to make slow."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from pathlib import Path

import pytest

from hil_tests.broker import mosquitto_available
from hil_tests.ptys import socat_available
from hil_tests.report import write_report
from hil_tests.system_rig import load_system_rig
from hil_tests.system_runner import run_system
from provisioning.swtpm import swtpm_available
from tests.conftest import missing
from tests.firmware_run import micropython_or_skip

pytestmark = [pytest.mark.hil, pytest.mark.services, pytest.mark.timeout(300)]

RIGS = Path(__file__).parents[2] / "hil_tests" / "rigs"
SYSTEM = sorted(
    p for p in RIGS.glob("*.toml") if "[system]" in p.read_text() and not p.stem.startswith("soak")
)


def _replayed_data_or_skip(path: Path) -> None:
    """A rig that replays a SKAB file needs ../shared (tests skip without it, never in CI)."""
    replay = tomllib.loads(path.read_text())["system"].get("replay")
    if replay and not (path.parent / replay).is_file():
        missing(f"{path.name} replays {replay}: this clone has no ../shared datasets")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in SYSTEM])
async def test_the_rig_passes_every_check(path: Path, tmp_path: Path) -> None:
    micropython_or_skip()
    if not mosquitto_available():
        missing("mosquitto is not installed (apt install mosquitto)")
    _replayed_data_or_skip(path)
    rig = load_system_rig(path)
    if rig.tpm and (not swtpm_available() or importlib.util.find_spec("tpm2_pytss") is None):
        missing(f"{path.name} signs with swtpm: apt install swtpm libtss2-dev, then make sync")
    if rig.plc_transport == "rtu" and not socat_available():
        missing(f"{path.name} runs Modbus RTU on a socat pty pair: apt install socat")
    if rig.spool_mb and os.geteuid() != 0:
        missing(f"{path.name} mounts a small tmpfs under the spool: run as root")
    report = await run_system(rig, tmp_path)
    html_path, _ = write_report(tmp_path, report.to_json())
    failed = [f"{v.name}: {v.detail}" for v in report.verdicts if not v.passed]
    assert not report.error and not failed, f"{report.error} {failed} (see {html_path})"
