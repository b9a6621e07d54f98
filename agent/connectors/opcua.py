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
username = "agent"              # user/password login; the password never in this file:
password_file = "opcua.pw"      #   a file (first line), or password_env = "OPCUA_PASSWORD"
[[opcua.signals]]
name = "pressure"
node = "nsu=urn:plc:vendor;s=Pressure"   # or ns=2;s=Pressure
unit = "bar"
```

A node id may name its namespace by URI (``nsu=``): each session resolves it through the
server's namespace array (indexes can change when a server restarts); a URI the server
does not have is a source gap (``bad_node``) for that signal, logged by name.

A value is recorded once: the value last recorded for a signal, with the same
SourceTimestamp, is skipped (a new subscription, after a reconnect or a restart of the agent,
reports the current value again; a poll reads it again). The last source timestamp (and a
digest of the value) per signal is kept in a file beside the spool, written once what it
covers is committed, so a restart does not record unchanged values again.

Each value keeps its OPC UA StatusCode in the reading's quality (the top two bits are the
severity: good, uncertain, bad) and its SourceTimestamp. A Bad value is recorded as NaN (its
number is not to be used, Part 4 §7.39). A String or LocalizedText is recorded as text, a
DateTime as RFC 3339 UTC text, an array as one reading per element (signal ``name[i]``).
A node the server does not know is a source gap (``bad_node``), stated once a second while it
lasts; the other nodes keep flowing. A lost connection is noticed by
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
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import (
    DataChangeEvent,
    OverflowPolicy,
    StatusChangeEvent,
    Subscription,
)
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError, UaStringParsingError

from agent.connectors.base import QUALITY_BAD, Committed, Emit, Sample, SourceGap
from agent.connectors.common import (
    SCALING,
    MalformedPayload,
    Reconnector,
    Scaling,
    SourceWatch,
    config_dir,
    parse_list_section,
    parse_scaling,
    parse_signals,
    text_value,
    to_float,
)
from agent.errors import ConfigError
from agent.tomlcheck import TableKeys, Where
from agent.tomlcheck import choice as _choice
from agent.tomlcheck import get as _get
from agent.tomlcheck import get_int as _int
from attestation.cancel import reraise_if_cancelling
from attestation.durable import write_atomically

__all__ = [
    "TABLES",
    "LastSeen",
    "OpcUaConfig",
    "OpcUaConnector",
    "OpcUaSignal",
    "OpcUaUser",
    "last_seen_path",
    "samples_from_datavalue",
]

log = logging.getLogger(__name__)
OVERFLOW = "<queue-overflow>"  # the errors key of notifications lost to a full queue
# timeout_s bounds: below 0.1 s a loaded server times out on every request; past 10 min a
# dead link would be noticed only after every reading of that time was missed
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.1, 600.0


def _withhold_user_tokens(record: logging.LogRecord) -> bool:
    """asyncua dumps every request it sends at DEBUG, an ActivateSession's user token (a
    plain-text password without security) included: that one is logged by its name only."""
    if isinstance(record.args, tuple) and any(
        isinstance(a, ua.ActivateSessionRequest) for a in record.args
    ):
        record.msg, record.args = "Sending: ActivateSessionRequest (user token withheld)", ()
    return True


logging.getLogger("asyncua.client.ua_client.UASocketProtocol").addFilter(_withhold_user_tokens)


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
class OpcUaUser:
    """A user/password login. The password is read when a session starts, from a file or an
    environment variable, and kept nowhere else (not in the config, not in any repr)."""

    username: str
    password_file: Path | None = None
    password_env: str | None = None

    def password(self) -> str:
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8")
            except OSError as err:
                raise ConfigError(
                    str(self.password_file), "password_file", None, f"cannot read: {err.strerror}"
                ) from err
            where, key, secret = str(self.password_file), "password_file", text.split("\n")[0]
        else:
            name = self.password_env or ""
            where, key, secret = f"${name}", "password_env", os.environ.get(name, "")
        secret = secret.rstrip("\r")
        if not secret:
            raise ConfigError(where, key, None, f"no password for user {self.username!r}")
        return secret


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
    user: OpcUaUser | None = None


# The keys of an [[opcua]] table come from these dataclasses (code review D16, ``TableKeys``).
TABLES: Mapping[str, TableKeys] = {
    "opcua[]": TableKeys(
        OpcUaConfig,
        inline={
            "security": TableKeys(
                OpcUaSecurity,
                extra={"security": "the mode: 'Basic256Sha256' asks for the keys of this table"},
            ),
            "user": TableKeys(
                OpcUaUser,
                extra={
                    "password": (
                        "refused with a message of its own: a password is never written in"
                        " the config"
                    )
                },
            ),
        },
    ),
    "opcua[].signals[]": TableKeys(OpcUaSignal, inline={"scaling": SCALING}),
}


def _signal(t: dict[str, Any], w: Where) -> OpcUaSignal:
    TABLES["opcua[].signals[]"].check(t, w)
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
    user = _user(t, w)
    if not math.isfinite(deadband) or deadband < 0:
        raise w.error("deadband", f"{deadband} must be a finite value >= 0")
    # each request's and the connect's limit; a slow server or a satellite link needs more
    timeout_s = _get(t, w, "timeout_s", float, 5.0)
    if not (math.isfinite(timeout_s) and MIN_TIMEOUT_S <= timeout_s <= MAX_TIMEOUT_S):
        raise w.error("timeout_s", f"{timeout_s} outside {MIN_TIMEOUT_S}..{MAX_TIMEOUT_S} s")
    return OpcUaConfig(
        name=_get(t, w, "name", str),
        url=url,
        mode=_choice(t, w, "mode", ("subscribe", "poll"), "subscribe"),
        publishing_interval_ms=_int(t, w, "publishing_interval_ms", 10, 60_000, 100),
        deadband=deadband,
        poll_interval_ms=_int(t, w, "poll_interval_ms", 10, 3_600_000, 500),
        queue_size=_int(t, w, "queue_size", 10, 1_000_000, 10_000),
        timeout_s=timeout_s,
        security=security,
        signals=parse_signals(t, w, _signal),
        user=user,
    )


def _user(t: dict[str, Any], w: Where) -> OpcUaUser | None:
    if "password" in t:
        raise w.error(
            "password", "a password is never written in the config: give password_file or"
            " password_env",
        )  # fmt: skip
    username = _get(t, w, "username", str, None)
    file = _get(t, w, "password_file", str, None)
    env = _get(t, w, "password_env", str, None)
    if username is None:
        if file is not None or env is not None:
            raise w.error("password_file" if file else "password_env", "needs a username")
        return None
    if not username:
        raise w.error("username", "empty")
    if (file is None) == (env is None):
        raise w.error("username", "give its password as password_file = PATH or password_env"
                      " = NAME (one of them)")  # fmt: skip
    if file is not None:
        path = config_dir(w) / file
        if not path.is_file():
            raise w.error("password_file", f"{path} does not exist")
        return OpcUaUser(username, password_file=path)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env or ""):
        raise w.error("password_env", f"{env!r} is not an environment variable name")
    return OpcUaUser(username, password_env=env)


def parse_opcua_section(raw: Any, w: Where) -> tuple[OpcUaConfig, ...]:
    return parse_list_section(raw, w, _connector, TABLES["opcua[]"])


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


# Status codes that say the node itself is wrong, not its value: a source gap, not a reading
_BAD_NODE = frozenset(
    {
        StatusCodes.BadNodeIdUnknown,
        StatusCodes.BadNodeIdInvalid,
        StatusCodes.BadAttributeIdInvalid,
    }
)


def _text_of(raw: object) -> str | None:
    """The text of a value that is not a number, as the leaf records it; None for numbers."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, ua.LocalizedText):
        return raw.Text or ""
    if isinstance(raw, dt.datetime):
        stamp = raw if raw.tzinfo is not None else raw.replace(tzinfo=dt.UTC)  # UTC by spec
        return stamp.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return None


def _one(signal: OpcUaSignal, name: str, raw: object, ts: int, status: int) -> Sample:
    text = _text_of(raw)
    if text is not None:
        value, cut = text_value(text)
        return Sample(name, value, signal.scaling.unit, ts, status | cut)
    try:
        number = signal.scaling.apply(to_float(raw, signal.node), signal.node)
    except MalformedPayload:  # a structure, a ByteString: nothing we can record as is
        return Sample(name, math.nan, signal.scaling.unit, ts, status | QUALITY_BAD)
    return Sample(name, number, signal.scaling.unit, ts, status)


def samples_from_datavalue(signal: OpcUaSignal, dv: ua.DataValue, now_ns: int) -> list[Sample]:
    """One DataValue -> its Samples: one, or one per element of an array (``name[i]``).

    A Bad value is NaN with its StatusCode; text stays text (never a made-up NaN)."""
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    ts = _ns(dv.SourceTimestamp) or _ns(dv.ServerTimestamp) or now_ns
    raw = dv.Value.Value if dv.Value is not None else None
    if status & QUALITY_BAD:
        return [Sample(signal.name, math.nan, signal.scaling.unit, ts, status)]
    if isinstance(raw, list):
        return [_one(signal, f"{signal.name}[{i}]", x, ts, status) for i, x in enumerate(raw)]
    return [_one(signal, signal.name, raw, ts, status)]


def last_seen_path(spool: Path, connector: str) -> Path:
    """Where the connector ``connector`` keeps its last source timestamps: beside the spool."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", connector)
    if safe != connector:  # two names that map to one safe name must not share a file
        safe += "-" + hashlib.sha256(connector.encode()).hexdigest()[:8]
    return spool.with_name(f"opcua-last-seen-{safe}.json")


def _fingerprint(dv: ua.DataValue) -> tuple[int, str] | None:
    """(SourceTimestamp ns, digest of status and value) of a DataValue; None without a
    source timestamp (a value that cannot be told from a new one)."""
    ts = _ns(dv.SourceTimestamp)
    if ts is None:
        return None
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    raw = dv.Value.Value if dv.Value is not None else None
    return ts, hashlib.sha256(f"{status}:{raw!r}".encode()).hexdigest()[:16]


@dataclass
class LastSeen:
    """The last value recorded per signal (its SourceTimestamp and a digest of its status and
    value), kept in a file across restarts: the same value with the same source timestamp is
    not recorded twice (a new subscription reports the current value again, a poll reads it
    again). A value with another timestamp, or another value at the same timestamp (a coarse
    server clock), is recorded: a PLC clock stepped back must not silence new values.

    The file is written (atomically) only with what is committed: a state ahead of the spool
    would skip values that were never recorded. A lost or unreadable file costs one repeated
    value per signal, never a lost one."""

    path: Path | None = None
    last: dict[str, tuple[int, str]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def load(cls, path: Path | None) -> LastSeen:
        seen = cls(path)
        if path is None or not path.exists():
            return seen
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            seen.last = {str(k): (int(ts), str(fp)) for k, (ts, fp) in doc["signals"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("%s: unreadable (%s); values may be recorded once more", path, err)
        return seen

    def repeats(self, signal: str, dv: ua.DataValue) -> bool:
        """``dv`` is the value last recorded for ``signal``, with the same source timestamp."""
        fp = _fingerprint(dv)
        return fp is not None and self.last.get(signal) == fp

    def note(self, signal: str, dv: ua.DataValue) -> None:
        if (fp := _fingerprint(dv)) is not None:
            self.last[signal] = fp
            self.changed.set()

    def save(self, last: dict[str, tuple[int, str]]) -> None:
        if self.path is not None:
            doc = {"version": 1, "signals": {k: list(v) for k, v in last.items()}}
            write_atomically(self.path, json.dumps(doc, sort_keys=True).encode())


@dataclass
class OpcUaConnector:
    config: OpcUaConfig
    state_path: Path | None = None  # last source timestamps (``last_seen_path``); None: memory
    reconnector: Reconnector = field(init=False)
    errors: dict[str, int] = field(default_factory=dict)  # per signal; read by the metrics
    mode_in_use: str = ""  # "subscribe" or "poll" (after a subscription failed)
    notifications: int = 0
    polls: int = 0
    skipped: int = 0  # values not recorded: the last one recorded, with its source timestamp

    watch: SourceWatch = field(default_factory=SourceWatch)  # nodes the server does not know
    last_seen: LastSeen = field(init=False)
    _committed: Committed | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.reconnector = Reconnector(f"opcua {self.config.name}", source=self.config.name)
        self.last_seen = LastSeen.load(self.state_path)

    def bind_committed(self, committed: Committed) -> None:
        """The last source timestamps are written only once what they cover is committed."""
        self._committed = committed

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def peer_up(self) -> bool | None:  # read by the metrics and the status file
        return self.reconnector.up

    def _count(self, sample: Sample) -> None:
        if sample.quality & QUALITY_BAD:
            self.errors[sample.signal] = self.errors.get(sample.signal, 0) + 1

    async def run(self, emit: Emit) -> None:
        transient = (OSError, TimeoutError, ConnectionError, UaError)
        keeper = asyncio.create_task(self._keep_last_seen(), name=f"opcua[{self.name}] last-seen")
        try:
            await self.reconnector.run(self._session, transient, emit)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _keep_last_seen(self) -> None:
        """Write the last source timestamps, at most once a second, once they are committed."""
        seen = self.last_seen
        while True:
            await seen.changed.wait()
            seen.changed.clear()
            snapshot = dict(seen.last)  # noted after their emit: the commit covers them
            if self._committed is not None:
                await self._committed()
            try:
                await asyncio.to_thread(seen.save, snapshot)
            except OSError as err:  # a full disk: values may be recorded once more, no loss
                log.warning("opcua %s: cannot keep last source timestamps: %s", self.name, err)
            await asyncio.sleep(1.0)

    async def _emit_new(
        self, emit: Emit, values: Sequence[tuple[OpcUaSignal, ua.DataValue]],
        now_ns: int, gaps: Sequence[SourceGap] = (),
    ) -> None:  # fmt: skip
        """Emit the values that are not the one last recorded for their signal."""
        fresh = [(s, dv) for s, dv in values if not self.last_seen.repeats(s.name, dv)]
        self.skipped += len(values) - len(fresh)
        samples = [x for s, dv in fresh for x in samples_from_datavalue(s, dv, now_ns)]
        for sample in samples:
            self._count(sample)
        if samples or gaps:
            await emit(samples, gaps)
        for s, dv in fresh:  # after the emit: a commit that follows covers them
            self.last_seen.note(s.name, dv)

    async def _client(self) -> Client:
        cfg = self.config
        client = Client(cfg.url, timeout=cfg.timeout_s, watchdog_intervall=1.0)
        if cfg.user is not None:
            client.set_user(cfg.user.username)
            client.set_password(cfg.user.password())
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

    async def _resolve(self, client: Client) -> tuple[list[tuple[OpcUaSignal, Node]], list[str]]:
        """(signal, node) for each signal, ``nsu=`` ids resolved through the server's
        namespace array; and the signals whose namespace URI the server does not have."""
        namespaces: list[str] | None = None
        nodes: list[tuple[OpcUaSignal, Node]] = []
        unknown: list[str] = []
        for signal in self.config.signals:
            nid = ua.NodeId.from_string(signal.node)
            uri = nid.NamespaceUri if isinstance(nid, ua.ExpandedNodeId) else None
            if uri:
                if namespaces is None:
                    namespaces = await client.get_namespace_array()
                if uri not in namespaces:
                    log.warning(
                        "opcua %s: %s: the server has no namespace %r (node %s); a source gap",
                        self.name, signal.name, uri, signal.node,
                    )  # fmt: skip
                    unknown.append(signal.name)
                    continue
                nid = ua.NodeId(nid.Identifier, ua.Int16(namespaces.index(uri)), nid.NodeIdType)
            nodes.append((signal, client.get_node(nid)))
        return nodes, unknown

    async def _session(self, connected: Callable[[], None], emit: Emit) -> None:
        client = await self._client()
        try:
            await client.connect()
            reraise_if_cancelling()  # asyncua's connect awaits with wait_for (gh-86296)
            connected()
            nodes, unknown = await self._resolve(client)
            if self.config.mode == "subscribe" and nodes:
                try:
                    await self._subscribe(client, nodes, unknown, emit)
                except UaStatusCodeError as err:
                    log.warning("opcua %s: subscription refused (%s); polling", self.name, err)
                else:
                    return
            await self._poll(client, nodes, unknown, emit)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.timeout_s):
                    await client.disconnect()
            reraise_if_cancelling()  # asyncua's disconnect swallows our cancellation

    async def _monitor(
        self, sub: Subscription, nodes: Sequence[tuple[OpcUaSignal, Node]]
    ) -> list[str]:
        """Create the monitored items; the signals whose node the server refused."""
        cfg = self.config
        refused: list[tuple[OpcUaSignal, str]] = []
        if cfg.deadband > 0:
            for signal, node in nodes:
                try:
                    await sub.deadband_monitor(node, ua.Double(cfg.deadband))
                except UaStatusCodeError as err:
                    if err.code not in _BAD_NODE:
                        raise
                    refused.append((signal, type(err).__name__))
        else:
            handles = await sub.subscribe_data_change(
                [n for _, n in nodes],
                sampling_interval=ua.Double(float(cfg.publishing_interval_ms)),
            )
            refused = [
                (s, h.name) for (s, _), h in zip(nodes, handles, strict=True)
                if isinstance(h, ua.StatusCode)
            ]  # fmt: skip
        for signal, why in refused:
            self._refused(signal, why)
        return [s.name for s, _ in refused]

    def _refused(self, signal: OpcUaSignal, why: str) -> None:
        log.warning(
            "opcua %s: %s: the server refused its node %s (%s); a source gap",
            self.name, signal.name, signal.node, why,
        )  # fmt: skip

    async def _subscribe(
        self, client: Client, nodes: Sequence[tuple[OpcUaSignal, Node]], unknown: list[str],
        emit: Emit,
    ) -> None:  # fmt: skip
        cfg = self.config
        by_node = {n.nodeid: s for s, n in nodes}
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
            missing = [*unknown, *await self._monitor(sub, nodes)]
            self.mode_in_use = "subscribe"
            await self._deliver(client, sub, by_node, missing, overflow, emit)

    async def _deliver(
        self, client: Client, sub: Subscription, by_node: dict[ua.NodeId, OpcUaSignal],
        missing: list[str], overflow: asyncio.Event, emit: Emit,
    ) -> None:  # fmt: skip
        """The subscription's event loop: one branch per OPC UA event kind."""
        cfg = self.config
        stated = 0.0  # when the missing nodes were last stated as source gaps
        queued = cfg.queue_size  # after an overflow: what the full queue held
        while True:
            # a stop that asyncua swallowed (its requests await with wait_for) is handed
            # back here, within a second: the loop wakes at least that often
            reraise_if_cancelling()
            if overflow.is_set():  # deliver what was queued, then start afresh
                if queued == 0:
                    raise ConnectionError(f"{cfg.queue_size} notifications behind")
                queued -= 1
            if missing and time.monotonic() - stated >= 1.0:
                stated = time.monotonic()
                await emit([], [self.watch.failed(n, "bad_node") for n in missing])
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
                dv = ev.data.monitored_item.Value
                await self._emit_new(emit, [(signal, dv)], time.time_ns())

    async def _poll(
        self, client: Client, nodes: Sequence[tuple[OpcUaSignal, Node]], unknown: list[str],
        emit: Emit,
    ) -> None:  # fmt: skip
        self.mode_in_use = "poll"
        period = self.config.poll_interval_ms / 1000
        while True:
            reraise_if_cancelling()  # a stop that asyncua's read swallowed
            started = time.monotonic()
            values = await client.read_attributes([n for _, n in nodes]) if nodes else []
            now = time.time_ns()
            read: list[tuple[OpcUaSignal, ua.DataValue]] = []
            gaps = [self.watch.failed(name, "bad_node", now) for name in unknown]
            for (signal, _), dv in zip(nodes, values, strict=True):
                if dv.StatusCode is not None and dv.StatusCode.value in _BAD_NODE:
                    if not self.watch.is_down(signal.name):  # once per outage
                        self._refused(signal, dv.StatusCode.name)
                    gaps.append(self.watch.failed(signal.name, "bad_node", now))
                    continue
                self.watch.ended(signal.name)
                read.append((signal, dv))
            await self._emit_new(emit, read, now, gaps)
            self.polls += 1
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))
