"""System rigs end to end: the real agent, a SIMULATED PLC behind the fault proxy and a
firmware node on a private Mosquitto, a kill -9 and a replay attack injected; the report's
HTML shades the fault windows and its JSON twin carries every check. Ctrl-C on a running rig
stops every process it started and still leaves a partial report."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import psutil
import pytest

from hil_tests.broker import Mosquitto, mosquitto_available
from hil_tests.report import write_report
from hil_tests.system_rig import load_system_rig
from hil_tests.system_runner import NODE_TOPIC, NODES_CLIENT_ID, _open_agent_session, run_system
from tests.conftest import missing
from tests.firmware_run import micropython_or_skip
from tests.waiting import until, until_sync

pytestmark = [pytest.mark.hil, pytest.mark.services, pytest.mark.timeout(240)]

RIG = """
[system]
duration_s = 20
settle_s = 4
nodes = ["n1"]
plc = true
window_ms = 200

[[inject]]
kind = "agent_kill9"
at_s = 3
duration_s = 1

[[inject]]
kind = "plc_partition"
at_s = 5
duration_s = 3

[[inject]]
kind = "node_replay"
node = "n1"
at_s = 17

[[check]]
kind = "committed_kept"
[[check]]
kind = "windows_verify"
[[check]]
kind = "node_refusals"
reason = "replay"
[[check]]
kind = "plc_outage_visible"
inject = 1
[[check]]
kind = "rss_below_mb"
limit = 1000
"""


def _needs_tools() -> None:
    micropython_or_skip()
    if not mosquitto_available():
        missing("mosquitto is not installed (apt install mosquitto)")


async def test_a_rig_injects_its_faults_and_reports_every_check(tmp_path: Path) -> None:
    _needs_tools()
    path = tmp_path / "rig.toml"
    path.write_text(RIG)
    report = await run_system(load_system_rig(path), tmp_path / "out")
    assert not report.error, report.error
    failed = [f"{v.name}: {v.detail}" for v in report.verdicts if not v.passed]
    assert len(report.verdicts) == 5 and not failed, failed
    assert report.figures["agent_kills"] == 1
    assert [j["kind"] for j in report.injected] == ["agent_kill9", "plc_partition", "node_replay"]
    html_path, json_path = write_report(tmp_path / "out", report.to_json())
    page = html_path.read_text()
    assert page.count("<svg") >= 3 and "plc_partition 5" in page  # a shaded, labelled window
    assert page.count('<tr class="pass">') == 5
    twin = json.loads(json_path.read_text())
    assert twin["passed"] is True and len(twin["checks"]) == 5
    assert twin["series"]["n1.temp"] and twin["resources"]


def test_ctrl_c_stops_every_process_and_leaves_a_partial_report(tmp_path: Path) -> None:
    _needs_tools()
    path = tmp_path / "rig.toml"
    path.write_text(RIG.replace("duration_s = 20", "duration_s = 120"))
    out = tmp_path / "out"
    cli = subprocess.Popen(
        [sys.executable, "-m", "factoryops", "hil", "run", str(path), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    parent = psutil.Process(cli.pid)
    started: list[psutil.Process] = []

    def rig_up() -> bool:
        """The agent, a node and the broker are the CLI's children (or it has ended)."""
        started[:] = parent.children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started if p.is_running())
        up = "agent run" in names and "main.py" in names
        return cli.poll() is not None or (up and (out / "work" / "spool.db").exists())

    until_sync(rig_up, 120, "the rig's agent, node and broker running", every_s=0.2)
    assert cli.poll() is None, cli.communicate()[0].decode()[-2000:]
    cli.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the foreground process
    output = cli.communicate(timeout=120)[0].decode()
    assert cli.returncode == 130, output[-2000:]
    assert "interrupted" in output
    alive = [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left running: {alive}"
    twin = json.loads((out / "report.json").read_text())
    assert twin["interrupted"] is True and twin["passed"] is False
    assert all(c["detail"].startswith("not judged") for c in twin["checks"])
    assert (out / "report.html").read_text().count("INTERRUPTED") == 1
    assert os.path.getsize(out / "report.html") > 0


async def test_a_rig_pointed_at_real_equipment_drives_it_through_the_proxy(tmp_path: Path) -> None:
    """[hardware] names a PLC address, a broker and a nodes folder; here a SIMULATED plant, a
    private Mosquitto and a firmware node stand in for them, started outside the rig as real
    equipment would be, so only the rig's own plumbing is under test."""
    _needs_tools()
    from hil_tests.broker import Mosquitto
    from hil_tests.modbus_server import PlantServer, agent_modbus_section
    from hil_tests.nodes import SimNode

    broker = Mosquitto(tmp_path / "broker").start()
    nodes_dir = tmp_path / "keys"
    nodes_dir.mkdir(mode=0o700)
    key = os.urandom(32)
    (nodes_dir / "press-3.key").write_bytes(key)
    (nodes_dir / "press-3.key").chmod(0o600)
    node = SimNode(tmp_path / "press-3", "press-3", key, "site/nodes/press-3", broker.port)
    try:
        async with PlantServer(period_s=0.05, faults=()) as plant:
            (tmp_path / "plc.toml").write_text(agent_modbus_section("10.9.9.9", 502))
            node.provision().start()
            path = tmp_path / "rig.toml"
            path.write_text(
                f"""
[system]
duration_s = 10
settle_s = 3
nodes = ["press-3"]
plc = true
[hardware]
plc = "127.0.0.1:{plant.port}"
plc_tags = "plc.toml"
broker = "mqtt://127.0.0.1:{broker.port}"
nodes_dir = "keys"
node_topic = "site/nodes"
[[inject]]
kind = "plc_partition"
at_s = 3
duration_s = 3
[[inject]]
kind = "node_replay"
node = "press-3"
at_s = 7
[[check]]
kind = "source_gap"
inject = 0
source = "pump-plc"
# the partition opens the Modbus breaker, which leaves the PLC alone breaker_open_ms = 5 s
# after it is back (the documented one timeout per open period): the gap ends up to 5 s late
slack_s = 6
[[check]]
kind = "node_refusals"
reason = "replay"
[[check]]
kind = "windows_verify"
"""
            )
            report = await run_system(load_system_rig(path), tmp_path / "out")
    finally:
        node.kill()
        broker.stop()
    assert not report.error, report.error
    assert [v.passed for v in report.verdicts] == [True] * 3, report.verdicts
    assert not (tmp_path / "out" / "work" / "nodes").exists()  # the real keys were used


async def test_a_nodes_first_messages_wait_for_the_agent_in_the_session_the_rig_opens(
    tmp_path: Path,
) -> None:
    """Nodes start at the agent's READY, before its MQTT connector first subscribed; the rig
    opens the agent's persistent session on its broker first, so what a node publishes in
    between is queued for the agent (without it, 1-5 first node readings were lost in 3 of 5
    gateway rig runs)."""
    if not mosquitto_available():
        missing("mosquitto is not installed (apt install mosquitto)")
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        await _open_agent_session(broker.port)
        async with aiomqtt.Client("127.0.0.1", broker.port) as node:  # the agent is not up yet
            await node.publish(f"{NODE_TOPIC}/n1", b"first reading", qos=1)
        got: list[bytes] = []
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, identifier=NODES_CLIENT_ID, clean_session=False
        ) as agent:

            async def take() -> None:
                async for message in agent.messages:
                    raw = message.payload  # bytes from the broker; typed wider by aiomqtt
                    got.append(raw if isinstance(raw, bytes) else str(raw).encode())

            reader = asyncio.create_task(take())
            try:
                await until(lambda: bool(got), within_s=10, what="the queued node message")
            finally:
                reader.cancel()
        assert got == [b"first reading"]
    finally:
        broker.stop()
