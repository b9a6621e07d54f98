"""Agent configuration: TOML into frozen dataclasses, validated with key, file and line.

Connector sections beyond Modbus are parsed by the parsers of an explicit table (section name
-> function taking the section's tables and a ``Where``): ``parse_config(sections=...)``, by
default ``agent.connectors.registry.SECTIONS``. Nothing registers itself on import, and this
module imports no connector (the registry imports the connectors, which import this).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.tomlcheck import TableKeys, Where, choice, get, get_int, no_unknown
from attestation.microproof import MICROPROOF_LIMITS
from attestation.reading import LEAF_LIMITS

__all__ = [
    "FRAGMENT_KEYS",
    "TABLES",
    "AgentConfig",
    "DeviceConfig",
    "HubConfig",
    "LogConfig",
    "ModbusDeviceConfig",
    "ModbusTag",
    "ScoringConfig",
    "SpoolConfig",
    "UpdatesConfig",
    "Where",
    "WindowConfig",
    "fragments_dir",
    "load_config",
    "parse_config",
    "parse_fragment",
]

REGISTER_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")  # one bit per tag, type "bool"


# the parsing helpers live in agent/tomlcheck.py (connectors use them too); these names stay
# for code written against them
_get, _int, _choice, _no_unknown = get, get_int, choice, no_unknown


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str
    signer: str = "software"  # "software" (development) or "tpm"
    key_file: Path = Path("device.key")
    tcti: str = "device:/dev/tpmrm0"


@dataclass(frozen=True, slots=True)
class HubConfig:
    url: str | None = None  # None: keep everything in the spool (offline gateway)
    timeout_s: float = 10.0
    batch_proofs: int = 32  # proofs per POST; the hub takes up to 256
    log_key: Path | None = None  # hub-log.vkey: follow the hub's checkpoints, report forks


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR; `agent run --log-level` overrides
    format: str = "text"  # text | json (one object a line, for a log shipper)
    health_interval_s: int = 60  # how often one INFO line sums up the agent's health
    status_interval_s: int = 5  # how often the status file `agent status` reads is written


@dataclass(frozen=True, slots=True)
class WindowConfig:
    max_readings: int = 1000
    max_ms: int = 1000
    max_pending_readings: int = 1_000_000  # acquisition waits only past this (signer stalled)


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path = Path("spool.db")
    disk_cap_bytes: int = 1 << 30
    # at most one fsync of the journal's writes per interval: a power cut loses at most that,
    # stated; a kill -9 only what came since the last write (ADR 0017, 0032)
    journal_ms: int = 10


@dataclass(frozen=True, slots=True)
class ModbusTag:
    name: str
    address: int
    table: str = "holding"  # holding | input (16-bit registers) | coil | discrete (bits)
    type: str = "float32"  # "bool" for coils and discrete inputs
    word_order: str = "big"
    byte_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    group: str = "default"  # poll group: polled at the device's groups[group] interval

    @property
    def count(self) -> int:
        """Registers (or, for bit tables, bits) the tag occupies."""
        return 1 if self.table in BIT_TABLES else REGISTER_TYPES[self.type]


@dataclass(frozen=True, slots=True)
class ModbusDeviceConfig:
    name: str
    host: str
    port: int = 502
    device_id: int = 1
    poll_interval_ms: int = 1000
    timeout_ms: int = 1000
    max_gap: int = 8  # registers a merged read may skip between tags
    tags: tuple[ModbusTag, ...] = ()
    transport: str = "tcp"  # tcp | rtu
    serial_port: str = ""  # rtu: the serial device (several devices may share one bus)
    baudrate: int = 19200
    parity: str = "N"  # N | E | O
    stopbits: int = 1
    bytesize: int = 8  # data bits: 8 (RTU as specified) or 7 (some old serial gear)
    groups: tuple[tuple[str, int], ...] = ()  # poll group -> interval ms ("default" implied)
    breaker_failures: int = 3  # failed polls in a row that open the circuit breaker
    breaker_open_ms: int = 5000  # how long an open breaker leaves the device alone
    # TCP: devices on one host:port share one connection (many PLCs and gateways take only a
    # few), one request at a time in turn; False gives this device a connection of its own
    share_connection: bool = True

    @property
    def link(self) -> str | None:
        """The key of the connection this device shares, or None (a connection of its own).

        RTU devices on one serial port always share it (one bus); TCP devices on one
        host:port share one connection unless ``share_connection`` is false."""
        if self.transport == "rtu":
            return f"rtu:{self.serial_port}"
        return f"tcp:{self.host}:{self.port}" if self.share_connection else None

    def interval_ms(self, group: str) -> int:
        return dict(self.groups).get(group, self.poll_interval_ms)


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """``[model]`` settings a signed configuration fragment may change (an RND1 study's)."""

    threshold_factor: float = 1.0  # the alarm limit is the manifest's threshold times this
    smoothing_span: int | None = None  # EWMA span over rows; None: the manifest's


@dataclass(frozen=True, slots=True)
class UpdatesConfig:
    """``[updates]``: the signed-update client, a task of ``agent run`` (docs/fleet.md)."""

    family: str = "autoencoder"  # the model channel: models/<family>/<channel>/latest.json
    channel: str = "fleet"
    config_site: str | None = None  # fragments come from config/<config_site>/<name>.toml
    fragments: tuple[str, ...] = ()  # the fragment names this gateway takes
    interval_s: int = 300  # between two checks while the hub answers
    max_backoff_s: int = 3600  # longest wait after failed checks (full jitter, ADR 0040)
    probation_s: int = 60  # a new fragment must keep the agent healthy this long


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    device: DeviceConfig
    hub: HubConfig = field(default_factory=HubConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    modbus: tuple[ModbusDeviceConfig, ...] = ()
    metrics_port: int | None = None
    connectors: dict[str, Any] = field(default_factory=dict)  # registered sections
    model_manifest: Path | None = None  # [model] manifest: ONNX anomaly model to score with
    metrics_host: str = "127.0.0.1"  # [metrics] host: where /metrics listens
    log: LogConfig = field(default_factory=LogConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    updates: UpdatesConfig | None = None  # no [updates]: no update task
    fragments: tuple[str, ...] = ()  # the installed fragments applied over this file


# The keys each table takes come from the dataclass it fills (code review D16); what differs
# between the file and the dataclass is written here, with its reason (``TableKeys``). Keyed by
# the table's path: "" the top level, "modbus[]" each [[modbus]] table. Each connector module
# has a TABLES of its own for its section.
_SCORING = TableKeys(ScoringConfig)
_MODBUS_TAG = TableKeys(ModbusTag)
TABLES: Mapping[str, TableKeys] = {
    "": TableKeys(
        AgentConfig,
        keys={
            "metrics_port": ("metrics",),
            "metrics_host": ("metrics",),
            "model_manifest": ("model",),
            "scoring": ("model",),
        },
        unset={
            "connectors": "one table per connector section, named by the parsers parse_config"
            " is given (agent.connectors.registry.SECTIONS)",
            "fragments": "the installed signed fragments load_config lays over the file",
        },
    ),
    "device": TableKeys(DeviceConfig),
    "hub": TableKeys(HubConfig),
    "window": TableKeys(WindowConfig),
    "spool": TableKeys(
        SpoolConfig,
        extra={
            "seq_block": (
                "seqs reserved per write: read and ignored, the journal's mark replaced it"
                " (files that set it still load)"
            )
        },
    ),
    "metrics": TableKeys(
        AgentConfig,
        fields=("metrics_port", "metrics_host"),
        keys={"metrics_port": ("port",), "metrics_host": ("host",)},
    ),
    "model": TableKeys(
        AgentConfig,
        fields=("model_manifest", "scoring"),
        keys={"model_manifest": ("manifest",)},
        inline={"scoring": _SCORING},
    ),
    "log": TableKeys(LogConfig),
    "updates": TableKeys(UpdatesConfig),
    "modbus[]": TableKeys(
        ModbusDeviceConfig,
        # ``signals`` is the word every connector uses; ``tags`` stays as its alias
        keys={"tags": ("signals", "tags")},
    ),
    "modbus[].signals[]": _MODBUS_TAG,
}

# What a configuration fragment may set: only settings the running agent applies live and
# a health check can judge. Identity, hub, spool and connectors stay local (a stolen
# targets key must not redirect uploads or readings; ADR 0040).
FRAGMENT_KEYS: Mapping[str, frozenset[str]] = {"model": _SCORING.accepted()}


# section name -> parser(list of tables or a table, Where) -> parsed value
SectionParser = Callable[[Any, Where], Any]


# The usual gateway notation for a 32-bit value's layout, A the most significant byte:
# (word order, byte order within each word) in this file's terms.
BYTE_ORDERS = {
    "ABCD": ("big", "big"),
    "CDAB": ("little", "big"),  # word-swapped: many PLCs store floats so
    "BADC": ("big", "little"),  # byte-swapped words
    "DCBA": ("little", "little"),
}
# Modicon's 5-digit register numbers: the leading digit names the table, the rest counts
# from 1 (40001 is holding register 0 on the wire). The agent takes protocol addresses.
_MODICON = {"holding": 40001, "input": 30001, "discrete": 10001}


def _address(t: dict[str, Any], w: Where, table: str) -> int:
    address = _int(t, w, "address", 0, 65535)
    base = _MODICON.get(table)
    if base is not None and base <= address <= base + 9998:
        raise w.error(
            "address",
            f"{address} looks like Modicon notation ({str(base)[0]}xxxx, counted from 1);"
            f" addresses here are zero-based protocol addresses, as on the wire:"
            f" {address} is address = {address - base} in table {table!r}",
        )
    return address


def _orders(t: dict[str, Any], w: Where) -> tuple[str, str]:
    """(word_order, byte_order): from ``word_order``/``byte_order`` (big, little), or from
    ``byte_order = "ABCD" | "CDAB" | "BADC" | "DCBA"`` alone."""
    byte_order = _get(t, w, "byte_order", str, "big")
    if byte_order in BYTE_ORDERS:
        if "word_order" in t:
            raise w.error("word_order", f'byte_order = "{byte_order}" already says the word order')
        return BYTE_ORDERS[byte_order]
    choices = ("big", "little", *BYTE_ORDERS)
    byte_order = _choice(t, w, "byte_order", choices, "big")
    return _choice(t, w, "word_order", ("big", "little"), "big"), byte_order


def _tag(t: dict[str, Any], w: Where) -> ModbusTag:
    _MODBUS_TAG.check(t, w)
    table = _choice(t, w, "table", REGISTER_TABLES + BIT_TABLES, "holding")
    bits = table in BIT_TABLES
    types = ("bool",) if bits else tuple(REGISTER_TYPES)
    word_order, byte_order = _orders(t, w)
    return ModbusTag(
        name=_get(t, w, "name", str),
        address=_address(t, w, table),
        table=table,
        type=_choice(t, w, "type", types, "bool" if bits else "float32"),
        word_order=word_order,
        byte_order=byte_order,
        scale=_get(t, w, "scale", float, 1.0),
        offset=_get(t, w, "offset", float, 0.0),
        unit=_get(t, w, "unit", str, ""),
        group=_get(t, w, "group", str, "default"),
    )


def _modbus(t: dict[str, Any], w: Where) -> ModbusDeviceConfig:
    TABLES["modbus[]"].check(t, w)
    if "signals" in t and "tags" in t:
        raise w.error("tags", "give either [[modbus.signals]] or [[modbus.tags]], not both")
    key = "signals" if "signals" in t else "tags"
    raw_tags = _get(t, w, key, list, [])
    if not raw_tags:
        raise w.error(key, "a Modbus device needs at least one [[modbus.signals]]")
    tags = tuple(_tag(x, w.child(f"{key}[{i}]")) for i, x in enumerate(raw_tags))
    groups_t = _get(t, w, "groups", dict, {})
    gw = w.child("groups")
    groups = tuple((name, _int(groups_t, gw, name, 10, 3_600_000)) for name in sorted(groups_t))
    for i, tag in enumerate(tags):
        if tag.group != "default" and tag.group not in groups_t:
            raise w.error(f"tags[{i}].group", f"{tag.group!r} is not in this device's groups")
    transport = _choice(t, w, "transport", ("tcp", "rtu"), "tcp")
    serial_port = _get(t, w, "serial_port", str, "")
    if transport == "rtu" and not serial_port:
        raise w.error("serial_port", 'transport = "rtu" needs serial_port (e.g. /dev/ttyUSB0)')
    return ModbusDeviceConfig(
        name=_get(t, w, "name", str),
        host=_get(t, w, "host", str, "" if transport == "rtu" else ...),
        port=_int(t, w, "port", 1, 65535, 502),
        device_id=_int(t, w, "device_id", 0, 247, 1),
        poll_interval_ms=_int(t, w, "poll_interval_ms", 10, 3_600_000, 1000),
        timeout_ms=_int(t, w, "timeout_ms", 10, 60_000, 1000),
        max_gap=_int(t, w, "max_gap", 0, 120, 8),
        tags=tags,
        transport=transport,
        serial_port=serial_port,
        baudrate=_int(t, w, "baudrate", 50, 4_000_000, 19200),
        parity=_choice(t, w, "parity", ("N", "E", "O"), "N"),
        stopbits=_int(t, w, "stopbits", 1, 2, 1),
        bytesize=_int(t, w, "bytesize", 7, 8, 8),
        groups=groups,
        breaker_failures=_int(t, w, "breaker_failures", 1, 1000, 3),
        breaker_open_ms=_int(t, w, "breaker_open_ms", 0, 3_600_000, 5000),
        share_connection=_get(t, w, "share_connection", bool, True),
    )


_BUS_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize", "timeout_ms")
_LINK_SETTINGS = {"rtu": _BUS_SETTINGS, "tcp": ("timeout_ms",)}


def _check_shared_links(devices: tuple[ModbusDeviceConfig, ...], root: Where) -> None:
    """Devices that share one link (an RTU serial port, a TCP host:port) share one client,
    so they must agree on its settings (for TCP only the timeout is the client's)."""
    first: dict[str, tuple[int, ModbusDeviceConfig]] = {}
    for i, d in enumerate(devices):
        if (link := d.link) is None:
            continue
        if link not in first:
            first[link] = (i, d)
            continue
        j, other = first[link]
        for key in _LINK_SETTINGS[d.transport]:
            if getattr(d, key) != getattr(other, key):
                where = (
                    f"serial_port {d.serial_port}: one bus has one setting"
                    if d.transport == "rtu"
                    else f"{d.host}:{d.port}: one shared connection has one setting "
                    "(or set share_connection = false on one of them)"
                )
                raise root.error(
                    f"modbus[{i}].{key}",
                    f"{getattr(d, key)!r} differs from modbus[{j}] ({getattr(other, key)!r}) "
                    f"on the same {where}",
                )


def _signal_places(
    modbus: tuple[ModbusDeviceConfig, ...], connectors: dict[str, Any]
) -> Iterator[tuple[str, str, str]]:
    """(signal name, unit, config key of its name) of every point the gateway reads."""
    for i, d in enumerate(modbus):
        for j, t in enumerate(d.tags):
            yield t.name, t.unit, f"modbus[{i}].tags[{j}]"
    for section, parsed in connectors.items():
        for i, c in enumerate(parsed if isinstance(parsed, tuple) else (parsed,)):
            for j, s in enumerate(getattr(c, "signals", ())):
                unit = getattr(s, "unit", None) or getattr(getattr(s, "scaling", None), "unit", "")
                yield str(s.name), str(unit or ""), f"{section}[{i}].signals[{j}]"


def _check_signals(places: Iterable[tuple[str, str, str]], root: Where) -> None:
    """What the hub would refuse in a leaf is refused here, with its line: a signal name is
    unique across the gateway (a reading names its source: two points of one name could not
    be told apart in the signed data) and within the leaf limits."""
    seen: dict[str, str] = {}
    for name, unit, key in places:
        if not 0 < len(name) <= LEAF_LIMITS.max_signal_chars:
            raise root.error(
                f"{key}.name", f"length {len(name)}, must be 1..{LEAF_LIMITS.max_signal_chars}"
            )
        if len(unit) > LEAF_LIMITS.max_unit_chars:
            raise root.error(
                f"{key}.unit", f"length {len(unit)}, at most {LEAF_LIMITS.max_unit_chars}"
            )
        if name in seen:
            first = seen[name]
            raise root.error(
                f"{key}.name",
                f"signal {name!r} is also {first}.name (line {root.line_of(f'{first}.name')}):"
                " signal names must be unique across the gateway, so each reading names its"
                " source (prefix them with the device, e.g. 'press-3.temp')",
            )
        seen[name] = key


def _toml(text: str, path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # 3.11's TOMLDecodeError has no lineno attribute; its message says "(at line N, ...)"
        m = re.search(r"at line (\d+)", str(err))
        raise ConfigError(path, "<toml>", int(m.group(1)) if m else None, str(err)) from err


def parse_fragment(text: str, path: str) -> dict[str, dict[str, Any]]:
    """A configuration fragment's tables, checked alone: only ``FRAGMENT_KEYS``, each value
    by the same rule as in agent.toml (errors name the fragment's file and line)."""
    doc, root = _toml(text, path), Where(path, text)
    if not doc:
        raise root.error("<toml>", "an empty fragment changes nothing")
    for section, table in doc.items():
        allowed = FRAGMENT_KEYS.get(section)
        if allowed is None or not isinstance(table, dict):
            raise root.error(
                section, f"a fragment may set only {', '.join(sorted(FRAGMENT_KEYS))} tables"
            )
        _no_unknown(table, root.child(section), allowed)
    _scoring(doc.get("model", {}), root.child("model"))
    return doc


def parse_config(
    text: str,
    path: str = "<config>",
    *,
    base_dir: Path | None = None,
    fragments: Sequence[tuple[str, str]] = (),
    sections: Mapping[str, SectionParser] | None = None,
) -> AgentConfig:
    """Parse and validate config text; relative paths are taken from ``base_dir``.

    ``fragments`` (file name, text), installed signed fragments, are checked alone and then
    laid over the file's tables in order, and the whole is checked again. ``sections``: the
    connector sections beyond Modbus and their parsers (by default every connector the agent
    has, ``agent.connectors.registry.SECTIONS``)."""
    if sections is None:
        # the registry imports the connectors, and they import this module: asked for here,
        # at call time, not at import, so neither module needs the other to be loaded first
        from agent.connectors.registry import SECTIONS  # noqa: PLC0415 - see above

        sections = {name: parse for name, (parse, _) in SECTIONS.items()}
    root = Where(path, text)
    doc = _overlaid(_toml(text, path), fragments, root)
    TABLES[""].check(doc, root, *sections)
    base = base_dir or Path(path).resolve().parent
    dev_t = _get(doc, root, "device", dict)
    w = root.child("device")
    TABLES["device"].check(dev_t, w)
    device = DeviceConfig(
        name=_get(dev_t, w, "name", str),
        signer=_choice(dev_t, w, "signer", ("software", "tpm"), "software"),
        key_file=base / _get(dev_t, w, "key_file", str, "device.key"),
        tcti=_get(dev_t, w, "tcti", str, "device:/dev/tpmrm0"),
    )
    hub_t = _get(doc, root, "hub", dict, {})
    w = root.child("hub")
    if "admin_token" in hub_t:
        # it was once accepted and silently ignored: the agent never acts as the hub admin
        raise w.error(
            "admin_token",
            "the agent does not use the hub's admin token (it authenticates with its own "
            "device key): remove the key, and keep the hub's admin token off gateways",
        )
    TABLES["hub"].check(hub_t, w)
    url = _get(hub_t, w, "url", str, None)
    if url is not None and not re.match(r"https?://[^/\s]+", url):
        raise w.error("url", f"{url!r} is not an http(s) URL")
    hub = HubConfig(
        url=url.rstrip("/") if url else None,
        timeout_s=_get(hub_t, w, "timeout_s", float, 10.0),
        batch_proofs=_int(hub_t, w, "batch_proofs", 1, 256, 32),
        log_key=base / log_key if (log_key := _get(hub_t, w, "log_key", str, None)) else None,
    )
    win_t = _get(doc, root, "window", dict, {})
    w = root.child("window")
    TABLES["window"].check(win_t, w)
    window = WindowConfig(
        # the hub takes up to ProofLimits.max_leaves readings a proof: never sign more
        max_readings=_int(win_t, w, "max_readings", 1, MICROPROOF_LIMITS.max_leaves, 1000),
        max_ms=_int(win_t, w, "max_ms", 1, 3_600_000, 1000),
        max_pending_readings=_int(win_t, w, "max_pending_readings", 1000, 50_000_000, 1_000_000),
    )
    sp_t = _get(doc, root, "spool", dict, {})
    w = root.child("spool")
    TABLES["spool"].check(sp_t, w)
    _int(sp_t, w, "seq_block", 1, 10_000_000, 10_000)
    spool = SpoolConfig(
        path=base / _get(sp_t, w, "path", str, "spool.db"),
        disk_cap_bytes=_int(sp_t, w, "disk_cap_bytes", 1 << 20, 1 << 50, 1 << 30),
        journal_ms=_int(sp_t, w, "journal_ms", 0, 1000, 10),
    )
    modbus = tuple(
        _modbus(t, root.child(f"modbus[{i}]"))
        for i, t in enumerate(_get(doc, root, "modbus", list, []))
    )
    _check_shared_links(modbus, root)
    metrics_t = _get(doc, root, "metrics", dict, {})
    w = root.child("metrics")
    TABLES["metrics"].check(metrics_t, w)
    # 0 asks the OS for a free port (tests); the default host keeps /metrics off the plant LAN
    metrics_port = _int(metrics_t, w, "port", 0, 65535, None) if "port" in metrics_t else None
    metrics_host = _get(metrics_t, w, "host", str, "127.0.0.1")
    connectors = {
        name: parse(doc[name], root.child(name)) for name, parse in sections.items() if name in doc
    }
    _check_signals(_signal_places(modbus, connectors), root)
    model_t = _get(doc, root, "model", dict, {})
    TABLES["model"].check(model_t, root.child("model"))
    manifest = _get(model_t, root.child("model"), "manifest", str, None)
    if not modbus and not connectors:
        raise root.error("modbus", "no connector configured: add a [[modbus]] section or another")
    updates = _updates(doc, root, manifest, hub)
    return AgentConfig(
        device,
        hub,
        window,
        spool,
        modbus,
        metrics_port,
        connectors,
        base / manifest if manifest else None,
        metrics_host,
        log=_log(_get(doc, root, "log", dict, {}), root.child("log")),
        scoring=_scoring(model_t, root.child("model")),
        updates=updates,
        fragments=tuple(p for p, _ in fragments),
    )


def _scoring(t: dict[str, Any], w: Where) -> ScoringConfig:
    factor = _get(t, w, "threshold_factor", float, 1.0)
    if not (math.isfinite(factor) and 0.1 <= factor <= 100.0):
        raise w.error("threshold_factor", f"{factor} outside 0.1..100 (times the model's limit)")
    span = _int(t, w, "smoothing_span", 1, 10_000, None) if "smoothing_span" in t else None
    return ScoringConfig(factor, span)


def _overlaid(
    doc: dict[str, Any], fragments: Sequence[tuple[str, str]], root: Where
) -> dict[str, Any]:
    """``doc`` with each fragment's tables laid over its own (each fragment checked alone)."""
    for frag_path, frag_text in fragments:
        for section, table in parse_fragment(frag_text, frag_path).items():
            base_table = doc.setdefault(section, {})
            if not isinstance(base_table, dict):
                raise root.error(section, "must be a table")
            base_table.update(table)
    return doc


def _updates(
    doc: dict[str, Any], root: Where, manifest: str | None, hub: HubConfig
) -> UpdatesConfig | None:
    if "updates" not in doc:
        return None
    if manifest is None or hub.url is None:
        raise root.error("updates", "updates need a [model] manifest and a [hub] url")
    t, w = _get(doc, root, "updates", dict), root.child("updates")
    TABLES["updates"].check(t, w)
    names = {}
    for key in ("family", "channel", "config_site"):
        if key in t and not _NAME.match(_get(t, w, key, str)):
            raise w.error(key, f"{t[key]!r}: letters, digits, '_', '.', '-' (1-64)")
        names[key] = t.get(key)
    fragments = _get(t, w, "fragments", list, [])
    for i, name in enumerate(fragments):
        if not isinstance(name, str) or not _NAME.match(name):
            raise w.error(f"fragments[{i}]", f"{name!r}: letters, digits, '_', '.', '-' (1-64)")
    if fragments and names["config_site"] is None:
        raise w.error("fragments", "fragments need config_site (the hub's config/<site>/)")
    interval = _int(t, w, "interval_s", 1, 7 * 86_400, 300)
    return UpdatesConfig(
        family=names["family"] or "autoencoder",
        channel=names["channel"] or "fleet",
        config_site=names["config_site"],
        fragments=tuple(fragments),
        interval_s=interval,
        max_backoff_s=_int(t, w, "max_backoff_s", interval, 7 * 86_400, max(interval, 3600)),
        probation_s=_int(t, w, "probation_s", 0, 86_400, 60),
    )


def _log(t: dict[str, Any], w: Where) -> LogConfig:
    TABLES["log"].check(t, w)
    return LogConfig(
        level=_choice(t, w, "level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        format=_choice(t, w, "format", ("text", "json"), "text"),
        health_interval_s=_int(t, w, "health_interval_s", 1, 86_400, 60),
        status_interval_s=_int(t, w, "status_interval_s", 1, 3_600, 5),
    )


def fragments_dir(cfg: AgentConfig) -> Path:
    """Where the installed signed fragments live (one ``<name>.toml`` each)."""
    return cfg.spool.path.parent / "updates" / "config" / "active"


def load_config(path: Path, *, fragments: bool = True) -> AgentConfig:
    """agent.toml, with the installed signed fragments (``fragments_dir``) laid over it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(path), "<file>", None, f"cannot read: {err.strerror}") from err
    base = path.resolve().parent
    cfg = parse_config(text, str(path), base_dir=base)
    if not fragments or cfg.updates is None or not cfg.updates.fragments:
        return cfg
    found = [fragments_dir(cfg) / f"{name}.toml" for name in cfg.updates.fragments]
    frags = [(str(p), p.read_text(encoding="utf-8")) for p in found if p.exists()]
    return parse_config(text, str(path), base_dir=base, fragments=frags) if frags else cfg
