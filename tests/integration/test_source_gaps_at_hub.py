"""Silences that leave a trace: each fault at a real peer becomes a source gap, with the right
source, reason and time range, in the signed micro-proofs the real hub stored.

Real parts on loopback: pymodbus server (and a TCP peer that never answers: a dead unit),
asyncua server, a private Mosquitto, the agent runtime, the uvicorn hub over SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from asyncua import ua
from asyncua.server.server import Server

from agent.backoff import Backoff
from agent.cli import make_signer
from agent.config import parse_config
from agent.connectors.registry import build_connectors
from agent.runtime import AgentRuntime, build_runtime
from agent.uplink import register_device
from attestation.localports import free_port
from attestation.microproof import SourceGap, parse_microproof
from benchmarks.modbus import FleetServer, SilentPeer
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from tests.brokers import Mosquitto, mosquitto_available
from tests.conftest import missing
from tests.hubkit import hub_readings
from tests.integration.test_agent_modbus import REFUSED_FROM, ModbusPlc
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)
FAST = Backoff(base_s=0.05, cap_s=0.3)


def _signed_source_gaps(hub_dir: Path) -> list[SourceGap]:
    """Key 16 of every proof the hub stored, decoded from the stored COSE bytes."""
    with sqlite3.connect(hub_dir / "hub.db") as db:
        rows = db.execute("SELECT cose FROM windows ORDER BY window").fetchall()
    return [g for (cose,) in rows for g in parse_microproof(cose).proof.source_gaps]


def _gaps(hub_dir: Path, source: str, reason: str) -> list[SourceGap]:
    return [g for g in _signed_source_gaps(hub_dir) if (g.source, g.reason) == (source, reason)]


class Agent:
    """A real agent runtime uploading to a real hub; ``connector(name)`` finds a connector."""

    def __init__(self, runtime: AgentRuntime, hub: HubServer, hub_dir: Path) -> None:
        self.runtime, self.hub, self.hub_dir = runtime, hub, hub_dir

    def connector(self, name: str) -> Any:
        return next(c for c in self.runtime.connectors if c.name in (name, f"modbus[{name}]"))

    def api_gaps(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.hub.url}/v1/source-gaps", params={"limit": 1000}, timeout=10)
        r.raise_for_status()
        return list(r.json()["source_gaps"])


@contextlib.asynccontextmanager
async def agent(tmp: Path, sections: str, *, max_readings: int = 200) -> AsyncIterator[Agent]:
    hub_dir = tmp / "hub"
    hub = HubServer(HubSettings.create(hub_dir, allow_software_keys=True, open_reads=True)).start()
    text = (
        f'[device]\nname = "gw"\n[hub]\nurl = "{hub.url}"\ntimeout_s = 2.0\n'
        f"[window]\nmax_readings = {max_readings}\nmax_ms = 200\n{sections}"
    )
    cfg = parse_config(text, str(tmp / "agent.toml"), base_dir=tmp)
    signer = make_signer(cfg.device)
    await asyncio.to_thread(
        register_device, hub.url, hub.settings.admin_token, signer, name="gw", state_dir=tmp
    )
    connectors = build_connectors(cfg)
    for c in connectors:  # reconnect quickly: the tests wait on conditions, not on backoff
        if hasattr(c, "reconnector"):
            c.reconnector.backoff = FAST
        else:
            c.backoff = FAST
    runtime = build_runtime(cfg, signer, connectors)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        yield Agent(runtime, hub, hub_dir)
    finally:
        stop.set()
        await task
        hub.stop()


async def _hub_has(cond: Callable[[], bool]) -> None:
    """Wait until ``cond`` holds for what the hub stored (a small SQLite file, read fast)."""
    await until(cond, within_s=60.0)


# ---- Modbus: an exception unit, a dead unit, the server killed and restarted ----


def _modbus(name: str, port: int, tag: str, address: int, extra: str = "") -> str:
    return (
        f'[[modbus]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\n'
        f"poll_interval_ms = 50\ntimeout_ms = 300\nbreaker_failures = 2\n"
        f"breaker_open_ms = 500\n{extra}"
        f'[[modbus.tags]]\nname = "{tag}"\naddress = {address}\n'
    )


async def test_modbus_faults_are_signed_source_gaps_at_the_hub(tmp_path: Path) -> None:
    plc = ModbusPlc()
    await plc.start()
    async with SilentPeer() as dead:
        sections = (
            _modbus("plc", plc.port, "plc.pressure", 0)
            + _modbus("plc-b", plc.port, "plc-b.refused", REFUSED_FROM)
            + _modbus("unit-9", dead.port, "unit-9.flow", 0)
        )
        async with agent(tmp_path, sections) as ag:
            try:
                # the exception unit and the dead unit, while the rest flows
                await _hub_has(lambda: bool(_gaps(ag.hub_dir, "plc-b.refused", "exception:2")))
                await _hub_has(lambda: bool(_gaps(ag.hub_dir, "unit-9", "timeout")))
                # the server killed, then started again on its port
                killed = time.time_ns()
                await plc.kill()
                await until(lambda: ag.connector("plc").watch.is_down("plc"))
                restarted = time.time_ns()
                await plc.start()
                await until(lambda: not ag.connector("plc").watch.is_down("plc"))
                back = time.time_ns()
                await _hub_has(
                    lambda: any(
                        g.last_ts_ns >= restarted for g in _gaps(ag.hub_dir, "plc", "disconnected")
                    ),
                )
            finally:
                await plc.kill()
            outage = _gaps(ag.hub_dir, "plc", "disconnected")
            assert killed <= outage[0].first_ts_ns <= restarted  # from the kill ...
            assert restarted <= outage[-1].last_ts_ns <= back  # ... until it answered again
            for a, b in itertools.pairwise(outage):
                assert b.first_ts_ns > a.last_ts_ns  # one outage, stated once: no overlap
            refused = _gaps(ag.hub_dir, "plc-b.refused", "exception:2")
            assert refused[0].first_ts_ns < killed  # refused from the first poll on
            signed = _signed_source_gaps(ag.hub_dir)
            assert not [g for g in signed if g.source == "plc.pressure"]  # it was never silent
            listed = await asyncio.to_thread(ag.api_gaps)
            assert {("unit-9", "timeout"), ("plc-b.refused", "exception:2")} <= {
                (g["source"], g["reason"]) for g in listed
            }
            stored = await asyncio.to_thread(hub_readings, ag.hub_dir / "hub.db")
            assert {r.signal for r in stored} == {"plc.pressure"}  # no made-up reading


# ---- OPC UA: a missing node, a String value, the server killed and restarted ----


class OpcServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.server: Server | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/plc/"

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace("urn:factoryops:test")
        plc = await server.nodes.objects.add_object(f"ns={idx};s=Plc", "Plc")
        await plc.add_variable(f"ns={idx};s=Pressure", "Pressure", 2.5, ua.VariantType.Double)
        await plc.add_variable(f"ns={idx};s=Recipe", "Recipe", "PVC-200", ua.VariantType.String)
        await server.start()
        self.server = server

    async def kill(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()


async def test_opc_ua_faults_are_signed_source_gaps_and_text_stays_text(tmp_path: Path) -> None:
    opc = OpcServer()
    await opc.start()
    sections = (
        f'[[opcua]]\nname = "press"\nurl = "{opc.url}"\npublishing_interval_ms = 50\n'
        '[[opcua.signals]]\nname = "press.pressure"\nnode = "ns=2;s=Pressure"\n'
        '[[opcua.signals]]\nname = "press.recipe"\nnode = "ns=2;s=Recipe"\n'
        '[[opcua.signals]]\nname = "press.ghost"\nnode = "ns=2;s=NoSuchNode"\n'
    )
    async with agent(tmp_path, sections) as ag:
        try:
            await _hub_has(lambda: bool(_gaps(ag.hub_dir, "press.ghost", "bad_node")))
            killed = time.time_ns()
            await opc.kill()
            await until(lambda: ag.connector("press").reconnector.watch.is_down("press"))
            restarted = time.time_ns()
            await opc.start()
            await until(lambda: not ag.connector("press").reconnector.watch.is_down("press"))
            back = time.time_ns()
            # the outage as closed at the reconnect, not only as first stated at the kill
            await _hub_has(
                lambda: any(
                    g.last_ts_ns >= restarted for g in _gaps(ag.hub_dir, "press", "disconnected")
                )
            )
        finally:
            await opc.kill()
        # the kill that ends the test starts an outage of its own, which the agent may
        # upload while the server stops: only the one under test counts
        outage = [g for g in _gaps(ag.hub_dir, "press", "disconnected") if g.first_ts_ns < back]
        assert killed <= outage[0].first_ts_ns <= restarted
        assert restarted <= outage[-1].last_ts_ns <= back
        stored = await asyncio.to_thread(hub_readings, ag.hub_dir / "hub.db")
        recipe = [r for r in stored if r.signal == "press.recipe"]
        assert recipe and all(r.value == "PVC-200" for r in recipe)  # text, never NaN
        assert "press.ghost" not in {r.signal for r in stored}


# ---- MQTT: the broker restarted ----


async def test_a_broker_restart_is_a_signed_source_gap(tmp_path: Path) -> None:
    if not mosquitto_available():
        missing("mosquitto is not installed")
    broker = Mosquitto(tmp_path / "broker").start()
    topic = f"sourcegaps/{tmp_path.name}/line"
    sections = (
        f'[[mqtt]]\nname = "line"\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
        f'client_id = "sg-{tmp_path.name}"\n'
        f'[[mqtt.signals]]\nname = "line.speed"\ntopic = "{topic}"\npointer = "/v"\n'
    )

    async def publish(v: float) -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.publish(topic, f'{{"v": {v}}}', qos=1)

    try:
        async with agent(tmp_path, sections) as ag:
            line = ag.connector("line")
            await until(lambda: line.reconnector.sessions >= 1)
            await publish(1.0)
            await until(lambda: ag.runtime.status()["proofs_synced"] >= 1)
            stopped = time.time_ns()
            broker.stop()
            await until(lambda: line.reconnector.watch.is_down("line"))
            restarted = time.time_ns()
            broker.start()
            await until(lambda: not line.reconnector.watch.is_down("line"))
            back = time.time_ns()
            await publish(2.0)  # a reading after the outage carries its closing range
            await _hub_has(
                lambda: any(
                    g.last_ts_ns >= restarted for g in _gaps(ag.hub_dir, "line", "disconnected")
                ),
            )
            outage = _gaps(ag.hub_dir, "line", "disconnected")
            assert stopped <= outage[0].first_ts_ns <= restarted
            assert restarted <= outage[-1].last_ts_ns <= back
    finally:
        broker.stop()


# ---- Any size of gateway: 20 devices x 100 tags upload ----


TAGS = range(100)


async def test_a_20_by_100_tag_gateway_uploads_to_the_real_hub(tmp_path: Path) -> None:
    """Before ADR 0016 each window carried statistics for 2,000 signals and the hub answered
    ``400 malformed_proof: payload[12]: 2000 signals, limit 1024``: the uplink stopped."""
    async with FleetServer(20, registers=256) as fleet:
        sections = "".join(
            f'[[modbus]]\nname = "d{d}"\nhost = "127.0.0.1"\nport = {fleet.port}\n'
            f"device_id = {d}\npoll_interval_ms = 100\ntimeout_ms = 2000\n"
            + "".join(
                f'[[modbus.tags]]\nname = "d{d}.t{t}"\naddress = {2 * t}\n' for t in range(100)
            )
            for d in range(1, 21)
        )
        # windows of up to 8,000 readings: without the signal cut each would hold 2,000 signals
        async with agent(tmp_path, sections, max_readings=8000) as ag:
            await until(lambda: ag.runtime.status()["proofs_synced"] >= 6, within_s=90)
            assert ag.runtime.status()["uplink_stopped"] is None
        with sqlite3.connect(ag.hub_dir / "hub.db") as db:
            coses = [c for (c,) in db.execute("SELECT cose FROM windows")]
        sizes = [len(parse_microproof(c).proof.stats) for c in coses]
        assert max(sizes) <= 1024 and len(coses) >= 6
        stored = await asyncio.to_thread(hub_readings, ag.hub_dir / "hub.db")
        assert len({r.signal for r in stored}) == 2000  # every tag reached the hub
