"""``factoryops provision node`` against a MicroPython unix-port REPL on a pty (socat): the key
and config land on the node and the key with the agent (0600), the key never appears in the
output or the log, and a wrong port, a busy port, a silent port and a node that answers with
an error each give one line and a fix, and leave the agent's nodes folder as it was."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import serial

from factoryops.cli import main
from tests.conftest import missing
from tests.firmware_run import micropython_or_skip
from tests.ptys import PtyPair, socat_available

pytestmark = pytest.mark.timeout(60)


@dataclass
class Bench:
    port: str  # where the technician's laptop plugs in
    flash: Path  # the node's filesystem (the micropython process's working folder)
    nodes_dir: Path  # the agent's registry of node keys
    agent_config: Path


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    if not socat_available():
        missing("socat is not installed (apt install socat)")
    pair = PtyPair(tmp_path / "pty").start()
    yield pair
    pair.stop()


@pytest.fixture
def bench(tmp_path: Path, pty_pair: PtyPair) -> Iterator[Bench]:
    binary = micropython_or_skip()
    flash = tmp_path / "flash"
    flash.mkdir()
    fd = os.open(pty_pair.b, os.O_RDWR | os.O_NOCTTY)
    node = subprocess.Popen([str(binary)], stdin=fd, stdout=fd, stderr=fd, cwd=flash)
    os.close(fd)
    nodes_dir = tmp_path / "agent" / "nodes"
    nodes_dir.mkdir(parents=True, mode=0o700)
    agent_config = tmp_path / "agent" / "agent.toml"
    agent_config.write_text(
        '[device]\nname = "gw"\n[[mqtt]]\nname = "nodes"\nurl = "mqtt://127.0.0.1:1883"\n'
        'payload = "node-v1"\ntopic = "plant/nodes/+"\nnodes_dir = "nodes"\n'
    )
    try:
        yield Bench(str(pty_pair.a), flash, nodes_dir, agent_config)
    finally:
        node.kill()
        node.wait()


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(["provision", "node", *args])
        code = 0
    except SystemExit as end:
        code = int(end.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_node_gets_its_key_and_config_and_the_agent_its_key(
    bench: Bench, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    sensors = bench.flash.parent / "sensors.json"
    sensors.write_text(json.dumps([{"name": "temp", "kind": "i2c", "unit": "C"}]))
    caplog.set_level(logging.DEBUG)
    args = ["--port", bench.port, "--id", "press-3", "--broker", "mqtt://10.0.0.5:1884"]
    code, out = _run(
        [*args, "--agent-config", str(bench.agent_config), "--sensors", str(sensors)], capsys
    )
    assert code == 0, out
    key = (bench.flash / "node.key").read_bytes()
    registered = bench.nodes_dir / "press-3.key"
    assert registered.read_bytes() == key and len(key) == 32
    assert registered.stat().st_mode & 0o777 == 0o600
    config = json.loads((bench.flash / "node.json").read_text())
    assert config["id"] == "press-3"
    assert (config["broker"], config["port"]) == ("10.0.0.5", 1884)
    assert config["topic"] == "plant/nodes/press-3"  # from the agent's topic filter
    assert config["sensors"] == [{"name": "temp", "kind": "i2c", "unit": "C"}]
    for text in (out, caplog.text):
        assert key.hex() not in text and key.hex().upper() not in text
    assert "provisioned" in out
    # a second run for the same id is refused unless --replace; the boot counter is kept
    (bench.flash / "boot.txt").write_text("41")
    code, out = _run([*args, "--nodes-dir", str(bench.nodes_dir)], capsys)
    assert code == 1 and "already registered" in out and "--replace" in out
    code, out = _run([*args, "--nodes-dir", str(bench.nodes_dir), "--replace"], capsys)
    assert code == 0, out
    assert registered.read_bytes() == (bench.flash / "node.key").read_bytes() != key
    assert (bench.flash / "boot.txt").read_text() == "41"


def _one_error(out: str) -> tuple[str, str]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    hints = [ln for ln in lines if ln.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, out
    assert "Traceback" not in out
    return errors[0], hints[0]


def test_a_wrong_port_gives_one_line_and_a_fix(
    bench: Bench, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(
        [
            "--port",
            "/dev/ttyNOPE9",
            "--id",
            "n1",
            "--broker",
            "mqtt://h",
            "--nodes-dir",
            str(bench.nodes_dir),
        ],
        capsys,
    )
    error, hint = _one_error(out)
    assert code == 1
    assert "cannot open /dev/ttyNOPE9" in error and "/dev/serial/by-id" in hint
    assert list(bench.nodes_dir.iterdir()) == []


def test_a_busy_port_gives_one_line_and_a_fix(
    bench: Bench, capsys: pytest.CaptureFixture[str]
) -> None:
    with serial.Serial(bench.port, exclusive=True):  # a terminal left open on the node
        code, out = _run(
            [
                "--port",
                bench.port,
                "--id",
                "n1",
                "--broker",
                "mqtt://h",
                "--nodes-dir",
                str(bench.nodes_dir),
            ],
            capsys,
        )
    error, hint = _one_error(out)
    assert code == 1
    assert "is busy" in error and "fuser" in hint
    assert list(bench.nodes_dir.iterdir()) == []


def test_a_node_that_answers_with_an_error_gives_one_line_and_a_fix(
    bench: Bench, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--port",
        bench.port,
        "--id",
        "n1",
        "--broker",
        "mqtt://h",
        "--nodes-dir",
        str(bench.nodes_dir),
    ]
    code, out = _run([*args, "--device-dir", "/no/such/folder"], capsys)
    error, hint = _one_error(out)
    assert code == 1
    assert "answered with an error" in error and "ENOENT" in error
    assert "reflash" in hint
    assert list(bench.nodes_dir.iterdir()) == []  # the agent is left as it was


def test_a_port_where_nothing_answers_gives_one_line_and_a_fix(
    tmp_path: Path, pty_pair: PtyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes_dir = tmp_path / "nodes"
    nodes_dir.mkdir()
    code, out = _run(
        [
            "--port",
            str(pty_pair.a),
            "--id",
            "n1",
            "--broker",
            "mqtt://h",
            "--nodes-dir",
            str(nodes_dir),
            "--timeout",
            "1",
        ],
        capsys,
    )
    error, hint = _one_error(out)
    assert code == 1
    assert "no MicroPython REPL answered" in error and "mpremote" in hint
