"""OPC UA connector (asyncua client): subscriptions, polled reads as fallback, security.

```toml
[[opcua]]
name = "press-3"
url = "opc.tcp://10.0.0.7:4840/"
mode = "subscribe"              # or "poll"
publishing_interval_ms = 100    # subscription publishing interval (and sampling interval)
deadband = 0.0                  # absolute deadband; 0 reports every change
poll_interval_ms = 500          # "poll" mode, and the fallback when a subscription fails
queue_size = 10000              # notifications held while the runtime is behind (see below)
security = "none"               # or "Basic256Sha256" (SignAndEncrypt):
# certificate = "agent-cert.der"; private_key = "agent-key.pem"; server_certificate = "plc.der"
# application_uri = "urn:factoryops:agent"   (must match the URI in the certificate)
[[opcua.signals]]
name = "pressure"
node = "ns=2;s=Pressure"
unit = "bar"
```

Each value keeps its OPC UA StatusCode in the reading's quality (the top two bits are the
severity: good, uncertain, bad) and its SourceTimestamp. A lost connection is noticed by
the client's watchdog or a failed request; the session ends and ``Reconnector`` starts a
new one after a jittered backoff, re-creating the subscription (asyncua's own reconnect is
left off so there is one reconnect policy in the agent).

If the runtime falls ``queue_size`` notifications behind (emit blocked), asyncua's queue is
full: each notification that does not fit is counted in ``errors["<queue-overflow>"]`` and
logged, and the session is ended (what was queued is still delivered first); a new session
makes a new subscription, which reports current values. Lost changes are never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import UaError, UaStatusCodeError, UaStringParsingError

from agent.config import CONNECTOR_PARSERS, Where, _choice, _get, _int, _no_unknown
from agent.connectors.base import QUALITY_BAD, Emit, Sample
from agent.connectors.common import (
    SCALING_KEYS,
    MalformedPayload,
    Reconnector,
    Scaling,
    config_dir,
    parse_list_section,
    parse_scaling,
    parse_signals,
    reraise_if_cancelling,
    to_float,
)

__all__ = ["OpcUaConfig", "OpcUaConnector", "OpcUaSignal", "sample_from_datavalue"]

log = logging.getLogger(__name__)
OVERFLOW = "<queue-overflow>"  # the errors key of notifications lost to a full queue


@dataclass(frozen=True, slots=True)
class OpcUaSignal:
    name: str
    node: str
    scaling: Scaling


@dataclass(frozen=True, slots=True)
class OpcUaSecurity:
    certificate: Path
    private_key: Path
    server_certificate: Path
    application_uri: str


@dataclass(frozen=True, slots=True)
class OpcUaConfig:
    name: str
    url: str
    mode: str
    publishing_interval_ms: int
    deadband: float
    poll_interval_ms: int
    security: OpcUaSecurity | None
    signals: tuple[OpcUaSignal, ...]
    queue_size: int = 10_000  # notifications buffered client-side while the runtime is behind
    timeout_s: float = 5.0


def _signal(t: dict[str, Any], w: Where) -> OpcUaSignal:
    _no_unknown(t, w, {"name", "node", *SCALING_KEYS})
    node = _get(t, w, "node", str)
    try:
        ua.NodeId.from_string(node)
    except (ValueError, UaStringParsingError) as err:
        raise w.error("node", f"{node!r} is not a NodeId (e.g. ns=2;s=Pressure)") from err
    return OpcUaSignal(_get(t, w, "name", str), node, parse_scaling(t, w))


def _connector(t: dict[str, Any], w: Where) -> OpcUaConfig:
    url = _get(t, w, "url", str)
    if not url.startswith("opc.tcp://"):
        raise w.error("url", f"{url!r} is not opc.tcp://host:port/path")
    security = None
    if _choice(t, w, "security", ("none", "Basic256Sha256"), "none") == "Basic256Sha256":
        base = config_dir(w)
        paths = {}
        for key in ("certificate", "private_key", "server_certificate"):
            path = base / _get(t, w, key, str)
            if not path.is_file():
                raise w.error(key, f"{path} does not exist")
            paths[key] = path
        security = OpcUaSecurity(
            application_uri=_get(t, w, "application_uri", str, "urn:factoryops:agent"), **paths
        )
    deadband = _get(t, w, "deadband", float, 0.0)
    if not math.isfinite(deadband) or deadband < 0:
        raise w.error("deadband", f"{deadband} must be a finite value >= 0")
    return OpcUaConfig(
        name=_get(t, w, "name", str),
        url=url,
        mode=_choice(t, w, "mode", ("subscribe", "poll"), "subscribe"),
        publishing_interval_ms=_int(t, w, "publishing_interval_ms", 10, 60_000, 100),
        deadband=deadband,
        poll_interval_ms=_int(t, w, "poll_interval_ms", 10, 3_600_000, 500),
        queue_size=_int(t, w, "queue_size", 10, 1_000_000, 10_000),
        security=security,
        signals=parse_signals(t, w, _signal),
    )


_KNOWN = {
    "name", "url", "mode", "publishing_interval_ms", "deadband", "poll_interval_ms", "security",
    "certificate", "private_key", "server_certificate", "application_uri", "signals", "queue_size",
}  # fmt: skip


def parse_opcua_section(raw: Any, w: Where) -> tuple[OpcUaConfig, ...]:
    return parse_list_section(raw, w, _connector, _KNOWN)


CONNECTOR_PARSERS["opcua"] = parse_opcua_section


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ns(stamp: dt.datetime | None) -> int | None:
    """An OPC UA DateTime -> Unix ns, exactly (a float would round to ~256 ns); None when
    absent or before 1970 (a server that sets no time sends 1601-01-01, DateTime 0)."""
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)  # OPC UA DateTime is UTC
    ns = (stamp - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    return ns if 0 < ns < 2**63 else None


def sample_from_datavalue(signal: OpcUaSignal, dv: ua.DataValue, now_ns: int) -> Sample:
    """One DataValue -> one Sample; a bad or non-numeric value becomes NaN, quality bad."""
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    ts = _ns(dv.SourceTimestamp) or _ns(dv.ServerTimestamp) or now_ns
    raw = dv.Value.Value if dv.Value is not None else None
    try:
        value = signal.scaling.apply(to_float(raw, signal.node), signal.node)
    except MalformedPayload:
        value, status = math.nan, status | QUALITY_BAD
    return Sample(signal.name, value, signal.scaling.unit, ts, status)


@dataclass
class OpcUaConnector:
    config: OpcUaConfig
    reconnector: Reconnector = field(init=False)
    errors: dict[str, int] = field(default_factory=dict)  # per signal; read by the metrics
    mode_in_use: str = ""  # "subscribe" or "poll" (after a subscription failed)
    notifications: int = 0

    def __post_init__(self) -> None:
        self.reconnector = Reconnector(f"opcua {self.config.name}")

    @property
    def name(self) -> str:
        return self.config.name

    def _count(self, sample: Sample) -> None:
        if sample.quality & QUALITY_BAD:
            self.errors[sample.signal] = self.errors.get(sample.signal, 0) + 1

    async def run(self, emit: Emit) -> None:
        transient = (OSError, TimeoutError, ConnectionError, UaError)
        await self.reconnector.run(lambda connected: self._session(emit, connected), transient)

    async def _client(self) -> Client:
        cfg = self.config
        client = Client(cfg.url, timeout=cfg.timeout_s, watchdog_intervall=1.0)
        if cfg.security is not None:
            client.application_uri = cfg.security.application_uri
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                certificate=str(cfg.security.certificate),
                private_key=str(cfg.security.private_key),
                server_certificate=str(cfg.security.server_certificate),
                mode=ua.MessageSecurityMode.SignAndEncrypt,
            )
        return client

    async def _session(self, emit: Emit, connected: Callable[[], None]) -> None:
        client = await self._client()
        try:
            await client.connect()
            connected()
            nodes = [client.get_node(s.node) for s in self.config.signals]
            if self.config.mode == "subscribe":
                try:
                    await self._subscribe(client, nodes, emit)
                except UaStatusCodeError as err:
                    log.warning("opcua %s: subscription refused (%s); polling", self.name, err)
                else:
                    return
            await self._poll(client, nodes, emit)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.timeout_s):
                    await client.disconnect()
            reraise_if_cancelling()  # asyncua's disconnect swallows our cancellation

    async def _subscribe(self, client: Client, nodes: Sequence[Node], emit: Emit) -> None:
        cfg = self.config
        by_node = {n.nodeid: s for n, s in zip(nodes, cfg.signals, strict=True)}
        sub = await client.create_subscription(
            cfg.publishing_interval_ms,
            queue_maxsize=cfg.queue_size,
            overflow=OverflowPolicy.DISCONNECT,  # DROP_OLDEST, the default, drops silently
        )

        overflow = asyncio.Event()

        def overflowed() -> None:  # asyncua calls this for each notification it cannot queue
            lost = self.errors.get(OVERFLOW, 0)
            self.errors[OVERFLOW] = lost + 1
            if not overflow.is_set():
                log.warning(
                    "opcua %s: the runtime is %d notifications behind; changes are lost "
                    "(counted in errors[%s]) until a new subscription is made",
                    self.name, cfg.queue_size, OVERFLOW,
                )  # fmt: skip
            overflow.set()

        sub.set_overflow_disconnect_handler(overflowed)
        async with sub:
            if cfg.deadband > 0:
                for node in nodes:
                    await sub.deadband_monitor(node, ua.Double(cfg.deadband))
            else:
                await sub.subscribe_data_change(
                    list(nodes), sampling_interval=ua.Double(float(cfg.publishing_interval_ms))
                )
            self.mode_in_use = "subscribe"
            queued = cfg.queue_size  # after an overflow: what the full queue held
            while True:
                if overflow.is_set():  # deliver what was queued, then start afresh
                    if queued == 0:
                        raise ConnectionError(f"{cfg.queue_size} notifications behind")
                    queued -= 1
                ev = await sub.next_event(timeout=1.0)
                if ev is None:
                    if overflow.is_set():
                        raise ConnectionError(f"{cfg.queue_size} notifications behind")
                    await client.check_connection()  # raises once the watchdog saw it die
                    continue
                if isinstance(ev, StatusChangeEvent):
                    if ev.notification.Status.is_bad():
                        raise ConnectionError(f"subscription status {ev.notification.Status}")
                    continue
                if isinstance(ev, DataChangeEvent):
                    self.notifications += 1
                    signal = by_node[ev.node.nodeid]
                    sample = sample_from_datavalue(
                        signal, ev.data.monitored_item.Value, time.time_ns()
                    )
                    self._count(sample)
                    await emit([sample])

    async def _poll(self, client: Client, nodes: Sequence[Node], emit: Emit) -> None:
        self.mode_in_use = "poll"
        period = self.config.poll_interval_ms / 1000
        while True:
            started = time.monotonic()
            values = await client.read_attributes(list(nodes))
            now = time.time_ns()
            samples = [
                sample_from_datavalue(s, dv, now)
                for s, dv in zip(self.config.signals, values, strict=True)
            ]
            for s in samples:
                self._count(s)
            await emit(samples)
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))
