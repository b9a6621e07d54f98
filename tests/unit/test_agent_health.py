"""The health verdicts `agent status` and the health line rest on: pure functions of the
status document and a given now (agent/health.py), and the JSON log format."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from agent.cli import agent
from agent.health import STATUS_VERSION, HealthLimits, health_line, problems, read_status
from agent.logsetup import configure_logging
from agent.outbox import WINDOWS_GONE

NOW = 1_800_000_000_000_000_000
LIMITS = HealthLimits()


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": STATUS_VERSION,
        "pid": os.getpid(),
        "started_ns": NOW - 3_600 * 10**9,
        "written_ns": NOW - 10**9,
        "status_interval_s": 5,
        "device": {"name": "gw", "utid": "utid:00", "signer": "software"},
        "connectors": [{"name": "modbus[plc]", "peer_up": True, "readings": 10, "errors": 0}],
        "spool": {"path": "s", "bytes": 1000, "disk_cap_bytes": 10**6, "backlog_windows": 0},
        "uplink": {"url": "http://hub", "failures": 0, "synced_windows": 5},
        "model": None,
        "windows_signed": 5,
        "readings_committed": 10,
        "gap_records": 0,
        "last_sign_s": 0.001,
    }
    doc.update(changes)
    return doc


def test_a_flowing_agent_has_no_problems() -> None:
    assert problems(_doc(), NOW, LIMITS) == []
    assert health_line(_doc(), NOW, LIMITS).endswith(", OK")


def test_a_hub_down_for_longer_than_the_limit_with_a_backlog_is_a_problem() -> None:
    uplink = {
        "url": "http://hub",
        "failures": 40,
        "synced_windows": 5,
        "last_sync_ns": NOW - 600 * 10**9,
        "last_error": "ConnectError: All connection attempts failed",
        "last_error_ns": NOW - 10**9,
    }
    spool = {"path": "s", "bytes": 1, "disk_cap_bytes": 10**6, "backlog_windows": 60}
    found = problems(_doc(uplink=uplink, spool=spool), NOW, LIMITS)
    assert found == [
        "uplink: nothing acknowledged for 600 s (last error: ConnectError: All connection"
        " attempts failed)"
    ]
    recent = dict(uplink, last_sync_ns=NOW - 10 * 10**9)
    assert problems(_doc(uplink=recent, spool=spool), NOW, LIMITS) == []


def test_a_stopped_uplink_a_dead_peer_a_full_spool_and_a_refused_model_are_each_named() -> None:
    doc = _doc(
        connectors=[{"name": "opcua", "peer_up": False, "readings": 0, "errors": 0}],
        uplink={"url": "h", "failures": 1, "synced_windows": 0, "stopped": "hub answered 409 fork"},
        spool={"path": "s", "bytes": 950_000, "disk_cap_bytes": 10**6, "backlog_windows": 3},
        model={"id": "m", "sha256": "00", "error": "hash mismatch"},
    )
    assert problems(doc, NOW, LIMITS) == [
        "connector opcua: its peer does not answer",
        "uplink stopped: hub answered 409 fork",
        "spool holds 950,000 bytes, over 90 % of its cap 1,000,000",
        "model: hash mismatch",
    ]


def test_a_status_file_not_rewritten_in_time_means_not_running(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(json.dumps(_doc(written_ns=NOW - 60 * 10**9)))
    _, verdict = read_status(path, NOW, LIMITS)
    assert not verdict.running and verdict.exit_code == 2
    assert "last written 60 s ago (every 5 s)" in verdict.why_not_running


def test_a_status_file_of_a_dead_process_means_not_running(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(json.dumps(_doc(pid=2**22 + 12345)))  # above Linux's pid_max default
    _, verdict = read_status(path, NOW, LIMITS)
    assert not verdict.running and "is gone (crashed?)" in verdict.why_not_running


def test_a_garbled_status_file_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text("{half")
    doc, verdict = read_status(path, NOW, LIMITS)
    assert doc is None and "cannot read the status file" in verdict.why_not_running


def test_json_logs_are_one_object_a_line_with_extras_and_libraries_stay_quiet() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "json", stream)
        logging.getLogger("agent.test").info("window %d sealed", 7, extra={"device": "gw"})
        logging.getLogger("pymodbus.transaction").info("frame dump 01 03 00 00")
    finally:
        root.handlers[:], root.level = saved
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["msg"] == "window 7 sealed" and doc["device"] == "gw" and doc["level"] == "INFO"


def test_a_fork_names_the_recover_command() -> None:
    stopped = {"url": "h", "failures": 1, "synced_windows": 0, "stopped": "hub answered 409 fork"}
    found = problems(_doc(uplink={**stopped, "stopped_code": "fork"}), NOW, LIMITS)
    assert len(found) == 1
    assert "factoryops agent recover --config <agent.toml>" in found[0]


def test_windows_the_spool_dropped_name_the_ways_out() -> None:
    stopped = {"url": "h", "failures": 0, "synced_windows": 0, "stopped": "hub expects window 3"}
    found = problems(_doc(uplink={**stopped, "stopped_code": WINDOWS_GONE}), NOW, LIMITS)
    assert found == [
        "uplink stopped: hub expects window 3: the hub lost windows this spool no longer holds"
        " (ADR 0048): restore the hub's newest backup, or accept the loss (docs/agent.md, the"
        " storage policy)"
    ]


def test_recover_refuses_a_running_agent_and_changes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nname = "gw"\n[hub]\nurl = "http://127.0.0.1:9"\n'
        '[[modbus]]\nname = "p"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\naddress = 0\n'
    )
    spool = tmp_path / "spool.db"
    spool.write_bytes(b"left as it is")
    now = time.time_ns()
    (tmp_path / "agent-status.json").write_text(json.dumps(_doc(written_ns=now)))
    result = CliRunner().invoke(agent, ["recover", "--config", str(cfg)])
    assert result.exit_code != 0
    assert f"the agent is running (pid {os.getpid()})" in str(result.exception)
    assert spool.read_bytes() == b"left as it is"


def test_recover_without_the_device_key_says_so_and_creates_none(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nname = "gw"\n[hub]\nurl = "http://127.0.0.1:9"\n'
        '[[modbus]]\nname = "p"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\naddress = 0\n'
    )
    result = CliRunner().invoke(agent, ["recover", "--config", str(cfg)])
    assert result.exit_code != 0
    assert "no device key at" in str(result.exception)
    assert not (tmp_path / "device.key").exists()
