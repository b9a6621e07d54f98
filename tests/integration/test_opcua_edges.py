"""OPC UA protocol edges against a real asyncua server on loopback: ``nsu=`` node ids
resolved through the server's namespace array, missing nodes and unknown namespaces logged
by name and stated as source gaps while the other signals flow, user/password logins with
the password kept out of the config and the log, and no value recorded twice across a
restart of the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.backoff import Backoff
from agent.config import parse_config
from agent.connectors.base import Sample, SourceGap
from agent.connectors.opcua import OpcUaConfig, OpcUaConnector, last_seen_path
from agent.errors import ConfigError
from tests.connectorkit import running
from tests.integration.test_connector_opcua import NS, PlcServer, opcua_text
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)
SECRET = "correct horse battery staple"


def _config(url: str, signals: dict[str, str], extra: str = "", mode: str = "subscribe") -> Any:
    toml = "".join(
        f'[[opcua.signals]]\nname = "{n}"\nnode = "{node}"\n' for n, node in signals.items()
    )
    return parse_config(opcua_text(url, toml, mode, extra), "/tmp/gw.toml")


def _one(url: str, signals: dict[str, str], extra: str = "", mode: str = "subscribe") -> Any:
    (cfg,) = _config(url, signals, extra, mode).connectors["opcua"]
    assert isinstance(cfg, OpcUaConfig)
    return cfg


class Sink:
    """What a connector emitted: samples and source gaps."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.gaps: list[SourceGap] = []

    async def __call__(self, samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        self.samples.extend(samples)
        self.gaps.extend(gaps)

    def values(self, signal: str) -> list[float | str]:
        return [s.value for s in self.samples if s.signal == signal]


async def _run(conn: OpcUaConnector, sink: Sink) -> asyncio.Task[None]:
    conn.reconnector.backoff = Backoff(base_s=0.05, cap_s=0.5)
    return asyncio.create_task(conn.run(sink))


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_nsu_ids_resolve_and_bad_nodes_are_named_gaps_while_others_flow(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``nsu=`` ids were sent as they are, which the server cannot decode: the whole
    connector got nothing (issue 17). A missing node in poll mode gave no log line."""
    plc = await PlcServer().start()
    cfg = _one(
        plc.url,
        {
            "pressure": f"nsu={NS};s=Pressure",
            "flow": "ns=2;s=Flow",
            "ghost": f"nsu={NS};s=NoSuchNode",
            "elsewhere": "nsu=urn:nobody:has:this;s=Pressure",
        },
        mode=mode,
    )
    conn, sink = OpcUaConnector(cfg), Sink()
    caplog.set_level(logging.WARNING, logger="agent.connectors.opcua")
    task = await _run(conn, sink)
    try:
        await until(lambda: conn.mode_in_use == mode, what=f"{mode} runs")
        await plc.write("Pressure", 4.5)
        await plc.write("Flow", 0.5)
        await until(lambda: 4.5 in sink.values("pressure") and 0.5 in sink.values("flow"))
        await until(lambda: {g.source for g in sink.gaps} >= {"ghost", "elsewhere"})
    finally:
        await _stop(task)
        await plc.stop()
    assert {s.signal for s in sink.samples} == {"pressure", "flow"}
    assert {(g.source, g.reason) for g in sink.gaps} == {
        ("ghost", "bad_node"),
        ("elsewhere", "bad_node"),
    }
    logged = caplog.text
    assert f"ghost: the server refused its node nsu={NS};s=NoSuchNode" in logged
    assert "elsewhere: the server has no namespace 'urn:nobody:has:this'" in logged


@pytest.mark.parametrize("how", ["file", "env"])
async def test_a_user_and_password_log_in_and_the_password_stays_out_of_the_log(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plc = await PlcServer(users={"agent": SECRET}).start()
    secret_file = tmp_path / "opcua.pw"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("FACTORYOPS_TEST_OPCUA_PW", SECRET)
    where = (
        f'password_file = "{secret_file}"'
        if how == "file"
        else 'password_env = "FACTORYOPS_TEST_OPCUA_PW"'
    )
    caplog.set_level(logging.DEBUG)
    # another test in this process may have run the agent's log set-up, which quiets the
    # chatty libraries at their own loggers: the dump this test reads is asyncua's DEBUG
    caplog.set_level(logging.DEBUG, logger="asyncua")
    try:
        good = _one(plc.url, {"pressure": "ns=2;s=Pressure"}, f'username = "agent"\n{where}')
        assert SECRET not in repr(good)
        async with running(OpcUaConnector(good), lambda c: c.mode_in_use != "") as (_, got):
            await plc.write("Pressure", 8.0)
            await until(lambda: 8.0 in [s.value for s in got])
        # a wrong password: refused by the server, retried, never a session
        secret_file.write_text("wrong\n")
        monkeypatch.setenv("FACTORYOPS_TEST_OPCUA_PW", "wrong")
        refused = OpcUaConnector(good)
        task = await _run(refused, Sink())
        try:
            await until(lambda: refused.reconnector.drops >= 2, what="two refused logins")
            assert refused.reconnector.sessions == 0
        finally:
            await _stop(task)
    finally:
        await plc.stop()
    assert "BadUserAccessDenied" in caplog.text
    # the agent's side at DEBUG, asyncua's request dumps included (the test server's own
    # DEBUG log shows what it received: not the agent's)
    agents = [r.getMessage() for r in caplog.records if not r.name.startswith("asyncua.server")]
    assert any("ActivateSessionRequest (user token withheld)" in m for m in agents)
    assert not [m for m in agents if SECRET in m or "'wrong'" in m or "b'wrong'" in m]


def test_a_password_in_the_config_or_a_half_login_is_refused(tmp_path: Path) -> None:
    url = "opc.tcp://127.0.0.1:4840/"
    signals = {"p": "ns=2;s=P"}
    cases = {
        'username = "agent"\npassword = "hunter2"': ("password", "never written"),
        'username = "agent"': ("username", "password_file"),
        'password_env = "X"': ("password_env", "needs a username"),
        'username = "agent"\npassword_file = "nope.pw"': ("password_file", "does not exist"),
        'username = "agent"\npassword_env = "not a name"': ("password_env", "not an environment"),
    }
    for extra, (key, words) in cases.items():
        with pytest.raises(ConfigError) as err:
            _config(url, signals, extra)
        assert err.value.key == f"opcua[0].{key}", extra
        assert words in str(err.value), extra
        assert "hunter2" not in str(err.value)


async def test_a_missing_password_at_connect_stops_the_connector_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FACTORYOPS_TEST_OPCUA_PW", raising=False)
    cfg = _one(
        "opc.tcp://127.0.0.1:1/",
        {"p": "ns=2;s=P"},
        'username = "agent"\npassword_env = "FACTORYOPS_TEST_OPCUA_PW"',
    )
    with pytest.raises(ConfigError, match=r"\$FACTORYOPS_TEST_OPCUA_PW.*no password"):
        await OpcUaConnector(cfg).run(Sink())


async def test_a_restart_does_not_record_unchanged_values_again(tmp_path: Path) -> None:
    """Each restart re-recorded every unchanged value with its old timestamp (issue 17): the
    new subscription reports the current value, and nothing remembered it was recorded."""
    plc = await PlcServer().start()
    state = last_seen_path(tmp_path / "spool.db", "plc")
    signals = {"pressure": "ns=2;s=Pressure", "flow": "ns=2;s=Flow"}
    try:
        for mode in ("subscribe", "poll"):
            cfg = _one(plc.url, signals, mode=mode)
            await plc.write("Pressure", 1.0)
            await plc.write("Flow", 2.0)
            first = OpcUaConnector(cfg, state_path=state)
            async with running(first, lambda c: c.mode_in_use != "") as (_, got):
                await until(lambda: 1.0 in [s.value for s in got] and len(got) >= 2)

                def kept(c: OpcUaConnector = first) -> bool:
                    if not state.exists():
                        return False
                    doc = json.loads(state.read_text())
                    return bool(doc["signals"] == {k: list(v) for k, v in c.last_seen.last.items()})

                await until(kept, what="the last values are kept")
            assert len(got) == 2  # each value once
            again = OpcUaConnector(cfg, state_path=state)
            async with running(again, lambda c: c.mode_in_use != "") as (_, regot):
                await until(lambda c=again: c.skipped >= 2, what="the current values seen again")
                await plc.write("Pressure", 3.0)
                await until(lambda: 3.0 in [s.value for s in regot])
            assert [(s.signal, s.value) for s in regot] == [("pressure", 3.0)]
    finally:
        await plc.stop()


async def test_the_last_values_are_kept_only_once_committed(tmp_path: Path) -> None:
    plc = await PlcServer().start()
    state = last_seen_path(tmp_path / "spool.db", "plc")
    released = asyncio.Event()
    waits = 0

    async def committed() -> None:  # the runtime's: returns once all emitted is committed
        nonlocal waits
        waits += 1
        await released.wait()

    conn = OpcUaConnector(_one(plc.url, {"pressure": "ns=2;s=Pressure"}), state_path=state)
    conn.bind_committed(committed)
    sink = Sink()
    task = await _run(conn, sink)
    try:
        await plc.write("Pressure", 6.0)
        await until(lambda: 6.0 in sink.values("pressure") and waits == 1)
        assert not state.exists()  # not before the commit
        released.set()
        await until(state.exists, what="kept once committed")
    finally:
        await _stop(task)
        await plc.stop()
