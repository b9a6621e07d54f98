"""A gateway a technician can watch: the start-up line, health lines, `agent status`, and
metrics that tell the truth while the PLC refuses connections and the hub is down.

Real pieces: a Modbus connector against a port nobody listens on (the PLC is away), an
uplink against a hub port nobody listens on, the agent's own status file and CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.backoff import Backoff
from agent.cli import agent
from agent.config import parse_config
from agent.connectors.modbus import ModbusConnector
from agent.runtime import build_runtime
from attestation.localports import free_port
from attestation.signers.software import SoftwareSigner
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


def _write_config(tmp: Path) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        '[device]\nname = "press-line-3"\n'
        f'[hub]\nurl = "http://127.0.0.1:{free_port()}"\ntimeout_s = 0.5\n'
        "[window]\nmax_readings = 50\nmax_ms = 50\n"
        "[log]\nstatus_interval_s = 1\nhealth_interval_s = 1\n"
        f'[[modbus]]\nname = "plc"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        "poll_interval_ms = 50\ntimeout_ms = 200\n"
        '[[modbus.tags]]\nname = "x"\naddress = 0\n',
        encoding="utf-8",
    )
    return path


def _status(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(agent, ["status", "--config", str(config)])
    return result.exit_code, result.output


def test_status_of_an_agent_that_never_ran_says_so_and_how_to_start_it(tmp_path: Path) -> None:
    code, out = _status(_write_config(tmp_path))
    assert code == 2
    assert "press-line-3 is not running: no status file at" in out
    assert "factoryops agent run --config" in out


async def test_a_dead_plc_and_a_dead_hub_show_in_status_metrics_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _write_config(tmp_path)
    cfg = parse_config(config.read_text(), str(config), base_dir=tmp_path)
    plc = ModbusConnector(cfg.modbus[0])
    runtime = build_runtime(cfg, SoftwareSigner.generate(), [plc, Ticker(10, 0.01)])
    assert runtime.uplink is not None  # the config names a hub
    runtime.uplink.backoff = Backoff(base_s=0.05, cap_s=0.2)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(runtime.run(stop))
    try:
        registry = runtime.metrics.registry
        await until(
            lambda: (
                (registry.get_sample_value("factoryops_agent_uplink_failures_total") or 0) >= 2
                and plc.peer_up is False
                and runtime.status_path.exists()
                and runtime.counters.windows_signed > 0
            )
        )
        # the file is rewritten every second: wait for one that has seen both faults
        await until(lambda: json.loads(runtime.status_path.read_text())["uplink"]["failures"] >= 2)
        assert registry.get_sample_value("factoryops_agent_peer_up", {"connector": plc.name}) == 0
        assert (
            registry.get_sample_value("factoryops_agent_peer_up", {"connector": "ticker"}) is None
        )
        code, out = await asyncio.to_thread(_status, config)
        assert code == 1, out
        assert "agent      press-line-3  running" in out
        assert "connector  modbus[plc]" in out and "NOT ANSWERING" in out
        assert "PROBLEM    connector modbus[plc]: its peer does not answer" in out
        assert "last error: ConnectError" in out
        as_json = CliRunner().invoke(agent, ["status", "--config", str(config), "--json"])
        doc = json.loads(as_json.output)
        assert doc["running"] is True and doc["status"]["device"]["utid"] == runtime.utid
        assert doc["status"]["spool"]["backlog_windows"] > 0
    finally:
        stop.set()
        await task
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("agent press-line-3 starting: utid:") for m in logged)
    assert any(m.startswith("health: ") and "PROBLEMS: connector modbus[plc]" in m for m in logged)
    retries = [m for m in logged if m.startswith("uplink: ") and "retrying in" in m]
    assert retries and all(not m.startswith("uplink: ;") for m in retries)
    assert all("ConnectError" in m for m in retries), retries[:3]
    code, out = await asyncio.to_thread(_status, config)
    assert code == 2 and "NOT RUNNING (the agent stopped cleanly)" in out
