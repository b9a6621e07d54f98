"""The OPC UA connector against a real asyncua server on loopback: subscriptions carry
StatusCodes into quality, polling works, a server restart is survived with the
subscription re-created, and Basic256Sha256 (SignAndEncrypt) with certificates works.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.backoff import Backoff
from agent.config import parse_config
from agent.connectors.base import QUALITY_BAD, QUALITY_GOOD, QUALITY_UNCERTAIN, Sample, SourceGap
from agent.connectors.opcua import OVERFLOW, OpcUaConfig, OpcUaConnector
from attestation.localports import free_port
from tests.connectorkit import running
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)
NS = "urn:factoryops:test"


@dataclass
class Accounts(UserManager):
    """The server's user/password accounts (asyncua's user manager interface)."""

    users: dict[str, str]

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None,
        certificate: Any = None,
    ) -> User | None:  # fmt: skip
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class PlcServer:
    """A real asyncua server with two Double variables; ``write`` sets value and status."""

    port: int = field(default_factory=free_port)
    certs: tuple[Path, Path] | None = None  # (certificate DER, key PEM) to require security
    max_subscriptions: int | None = None  # 0: a server that refuses every subscription
    users: dict[str, str] | None = None  # username -> password: no anonymous sessions
    server: Server | None = None
    nodes: dict[str, ua.NodeId] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/plc/"

    async def start(self) -> PlcServer:
        server = Server(user_manager=Accounts(self.users) if self.users is not None else None)
        await server.init()
        server.set_endpoint(self.url)
        if self.users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if self.max_subscriptions is not None:
            server.iserver.max_subscriptions = self.max_subscriptions
        if self.certs is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(self.certs[0]))
            await server.load_private_key(str(self.certs[1]))
        idx = await server.register_namespace(NS)
        plc = await server.nodes.objects.add_object(f"ns={idx};s=Plc", "Plc")
        for name in ("Pressure", "Flow"):
            var = await plc.add_variable(f"ns={idx};s={name}", name, 0.0, ua.VariantType.Double)
            self.nodes[name] = var.nodeid
        await server.start()
        self.server = server
        return self

    async def write(self, name: str, value: float, status: int = 0) -> None:
        """Set a value as a PLC does: with its status and the time it was sampled."""
        assert self.server is not None
        dv = ua.DataValue(
            ua.Variant(value, ua.VariantType.Double),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=dt.datetime.now(dt.UTC),  # type: ignore[arg-type]  # asyncua's DateTime is a datetime
        )
        await self.server.get_node(self.nodes[name]).write_value(dv)

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()


def _connected(cfg: OpcUaConfig) -> Any:
    return running(OpcUaConnector(cfg), lambda c: c.mode_in_use != "")


SIGNALS = """
[[opcua.signals]]
name = "pressure"
node = "ns=2;s=Pressure"
unit = "bar"
[[opcua.signals]]
name = "flow"
node = "ns=2;s=Flow"
scale = 10.0
"""


def opcua_text(url: str, signals: str, mode: str = "subscribe", extra: str = "") -> str:
    """An agent config with one ``[[opcua]]`` connector "plc" (50 ms) and ``signals``."""
    return f"""
[device]
name = "gw"
[[opcua]]
name = "plc"
url = "{url}"
mode = "{mode}"
publishing_interval_ms = 50
poll_interval_ms = 50
{extra}
{signals}"""


def _config(url: str, mode: str = "subscribe", extra: str = "") -> OpcUaConfig:
    (cfg,) = parse_config(opcua_text(url, SIGNALS, mode, extra), "/tmp/a.toml").connectors["opcua"]
    assert isinstance(cfg, OpcUaConfig)
    return cfg


def _values(got: list[Sample], signal: str) -> list[float]:
    return [s.value for s in got if s.signal == signal]


async def test_a_subscription_carries_values_and_status_codes() -> None:
    plc = await PlcServer().start()
    try:
        async with _connected(_config(plc.url)) as (conn, got):
            assert conn.mode_in_use == "subscribe"
            await plc.write("Pressure", 5.0)
            await until(lambda: 5.0 in _values(got, "pressure"))
            await plc.write("Pressure", 6.0, ua.StatusCodes.UncertainLastUsableValue)
            await plc.write("Flow", 0.25)
            await until(lambda: 6.0 in _values(got, "pressure") and 2.5 in _values(got, "flow"))
            await plc.write("Pressure", 7.0, ua.StatusCodes.BadSensorFailure)
            await until(lambda: any(s.quality & QUALITY_BAD for s in got))
        by_value = {s.value: s for s in got if s.signal == "pressure"}
        assert by_value[5.0].quality == QUALITY_GOOD
        assert by_value[6.0].quality & 0xC0000000 == QUALITY_UNCERTAIN
        assert by_value[6.0].quality == ua.StatusCodes.UncertainLastUsableValue  # the full code
        bad = next(s for s in got if s.quality & QUALITY_BAD)
        assert bad.quality == ua.StatusCodes.BadSensorFailure and conn.errors == {"pressure": 1}
        assert all(s.unit == "bar" for s in got if s.signal == "pressure")
    finally:
        await plc.stop()


async def test_polling_reads_every_signal_each_round_and_records_a_value_once() -> None:
    plc = await PlcServer().start()
    try:
        await plc.write("Pressure", 1.5)
        async with _connected(_config(plc.url, mode="poll")) as (conn, got):
            await until(lambda: conn.polls >= 10)
            assert conn.mode_in_use == "poll"
            # read ten times, unchanged (same source timestamp): recorded once per signal
            assert sorted(s.signal for s in got) == ["flow", "pressure"]
            assert conn.skipped >= 2 * 9
            await plc.write("Pressure", 2.5)
            await until(lambda: 2.5 in _values(got, "pressure"))
        assert _values(got, "pressure") == [1.5, 2.5]
    finally:
        await plc.stop()


async def test_a_refused_subscription_falls_back_to_polled_reads() -> None:
    plc = await PlcServer(max_subscriptions=0).start()
    try:
        await plc.write("Flow", 0.5)
        async with _connected(_config(plc.url)) as (conn, got):  # mode = "subscribe"
            await until(lambda: 5.0 in _values(got, "flow"))
            assert conn.mode_in_use == "poll"
        assert all(s.quality == QUALITY_GOOD for s in got)
    finally:
        await plc.stop()


async def test_source_timestamps_are_kept_exactly() -> None:
    plc = await PlcServer().start()
    stamp = dt.datetime(2026, 11, 25, 5, 14, 7, 123457, tzinfo=dt.UTC)
    try:
        async with _connected(_config(plc.url)) as (_, got):
            assert plc.server is not None
            dv = ua.DataValue(ua.Variant(3.0, ua.VariantType.Double), SourceTimestamp=stamp)
            await plc.server.get_node(plc.nodes["Pressure"]).write_value(dv)
            await until(lambda: 3.0 in _values(got, "pressure"))
        (sample,) = [s for s in got if s.value == 3.0]
        assert sample.ts_ns == 1_795_583_647_123_457_000
    finally:
        await plc.stop()


async def test_notifications_lost_behind_a_stalled_runtime_are_counted_then_resume() -> None:
    plc = await PlcServer().start()
    conn = OpcUaConnector(_config(plc.url, extra="queue_size = 10"))
    conn.reconnector.backoff = Backoff(base_s=0.05, cap_s=0.5)
    unstalled, got = asyncio.Event(), list[Sample]()

    async def emit(samples: list[Sample], gaps: Sequence[SourceGap] = ()) -> None:
        got.extend(samples)
        await unstalled.wait()  # the runtime's queue is full until released

    task = asyncio.create_task(conn.run(emit))
    try:
        await until(lambda: conn.mode_in_use == "subscribe")
        async with asyncio.timeout(60):
            value = 0.0
            while OVERFLOW not in conn.errors:  # a change per publishing interval
                value += 1.0
                await plc.write("Pressure", value)
                await asyncio.sleep(0.03)
        unstalled.set()
        await until(lambda: conn.reconnector.sessions >= 2)  # a fresh subscription
        await plc.write("Pressure", 1000.0)
        await until(lambda: 1000.0 in _values(got, "pressure"))
        pressures = _values(got, "pressure")
        assert pressures == [*sorted(pressures[:-1]), 1000.0]  # nothing reordered
        assert conn.errors[OVERFLOW] >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await plc.stop()


async def test_a_server_restart_is_survived_and_the_subscription_recreated() -> None:
    plc = await PlcServer().start()
    try:
        async with _connected(_config(plc.url)) as (conn, got):
            await plc.write("Pressure", 1.0)
            await until(lambda: 1.0 in _values(got, "pressure"))
            await plc.stop()
            await until(lambda: conn.reconnector.drops >= 1)
            plc = await PlcServer(port=plc.port).start()  # same port, a fresh server
            await until(lambda: conn.reconnector.sessions >= 2)
            await plc.write("Pressure", 2.0)
            await until(lambda: 2.0 in _values(got, "pressure"))
    finally:
        await plc.stop()


async def _certificate(
    directory: Path, name: str, uri: str, use: ExtendedKeyUsageOID
) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.der", directory / f"{name}-key.pem"
    await setup_self_signed_certificate(
        key, cert, uri, socket.gethostname(), [use], {"commonName": name}
    )
    return cert, key


async def test_basic256sha256_with_certificates(tmp_path: Path) -> None:
    server_cert = await _certificate(
        tmp_path, "plc", "urn:factoryops:test-plc", ExtendedKeyUsageOID.SERVER_AUTH
    )
    client_cert = await _certificate(
        tmp_path, "agent", "urn:factoryops:agent", ExtendedKeyUsageOID.CLIENT_AUTH
    )
    plc = await PlcServer(certs=server_cert).start()
    try:
        secure = (
            f'security = "Basic256Sha256"\ncertificate = "{client_cert[0]}"\n'
            f'private_key = "{client_cert[1]}"\nserver_certificate = "{server_cert[0]}"\n'
        )
        async with _connected(_config(plc.url, extra=secure)) as (_, got):
            await plc.write("Pressure", 9.0)
            await until(lambda: 9.0 in _values(got, "pressure"))
    finally:
        await plc.stop()
