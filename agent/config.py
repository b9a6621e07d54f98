"""Agent configuration: TOML into frozen dataclasses, validated with key, file and line.

Connector sections beyond Modbus register a parser in ``CONNECTOR_PARSERS`` (section name
-> function taking the section's tables and a ``Where``); ``load_config`` calls them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

__all__ = [
    "CONNECTOR_PARSERS",
    "AgentConfig",
    "DeviceConfig",
    "HubConfig",
    "ModbusDeviceConfig",
    "ModbusTag",
    "SpoolConfig",
    "Where",
    "WindowConfig",
    "load_config",
    "parse_config",
    "write_atomically",
]

REGISTER_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")  # one bit per tag, type "bool"


@dataclass(frozen=True, slots=True)
class Where:
    """Locates a key in the config text, so every error names the file and line."""

    path: str
    text: str
    prefix: str = ""

    def child(self, key: str) -> Where:
        return Where(self.path, self.text, f"{self.prefix}.{key}" if self.prefix else key)

    def line_of(self, key: str) -> int | None:
        """The line of ``key`` (``modbus[1].tags[0].type``), else of its nearest table."""
        lines = _key_lines(self.text)
        while key:
            if key in lines:
                return lines[key]
            key = key.rsplit(".", 1)[0] if "." in key else ""
        return None

    def error(self, key: str, message: str) -> ConfigError:
        full = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(self.path, full, self.line_of(full), message)


_ARRAY_HEADER = re.compile(r"\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"\[\s*([^\]]+?)\s*\]")
_KEY_LINE = re.compile(r"""([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*=""")


def _key_lines(text: str) -> dict[str, int]:
    """Map every table and key of a TOML text to its first line (tomllib keeps no lines).

    Arrays of tables get their index, as the parser's errors name them: the second
    ``[[modbus]]`` is ``modbus[1]``, its first ``[[modbus.tags]]`` ``modbus[1].tags[0]``.
    """
    out: dict[str, int] = {}
    counts: dict[str, int] = {}

    def resolve(parts: list[str]) -> str:
        cur = ""
        for part in parts:
            cand = f"{cur}.{part}" if cur else part
            cur = f"{cand}[{counts[cand] - 1}]" if cand in counts else cand
        return cur

    table = ""
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if m := _ARRAY_HEADER.match(s):
            parts = [p.strip().strip("\"'") for p in m.group(1).split(".")]
            base = resolve(parts[:-1])
            base = f"{base}.{parts[-1]}" if base else parts[-1]
            counts[base] = counts.get(base, 0) + 1
            table = f"{base}[{counts[base] - 1}]"
            out.setdefault(base, n)  # the array as a whole: its first table
        elif m := _TABLE_HEADER.match(s):
            table = resolve([p.strip().strip("\"'") for p in m.group(1).split(".")])
        elif m := _KEY_LINE.match(s):
            key = m.group(1).strip("\"'")
            out.setdefault(f"{table}.{key}" if table else key, n)
            continue
        else:
            continue
        out.setdefault(table, n)
    return out


def _get(t: dict[str, Any], w: Where, key: str, kind: type, default: Any = ...) -> Any:
    if key not in t:
        if default is ...:
            raise w.error(key, "missing")
        return default
    v = t[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if (isinstance(v, bool) and kind is not bool) or not isinstance(v, kind):
        raise w.error(key, f"expected {kind.__name__}, got {type(v).__name__} {v!r}")
    return v


def _int(t: dict[str, Any], w: Where, key: str, lo: int, hi: int, default: Any = ...) -> int:
    v: int = _get(t, w, key, int, default)
    if not lo <= v <= hi:
        raise w.error(key, f"{v} outside {lo}..{hi}")
    return v


def _choice(
    t: dict[str, Any], w: Where, key: str, choices: tuple[str, ...], default: Any = ...
) -> str:
    v: str = _get(t, w, key, str, default)
    if v not in choices:
        raise w.error(key, f"{v!r} is not one of {', '.join(choices)}")
    return v


def _no_unknown(t: dict[str, Any], w: Where, known: set[str]) -> None:
    for key in t:
        if key not in known:
            raise w.error(key, f"unknown key (known: {', '.join(sorted(known))})")


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
    admin_token: str | None = None  # development registration only
    log_key: Path | None = None  # hub-log.vkey: follow the hub's checkpoints, report forks


@dataclass(frozen=True, slots=True)
class WindowConfig:
    max_readings: int = 1000
    max_ms: int = 1000
    max_pending_readings: int = 1_000_000  # acquisition waits only past this (signer stalled)


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path = Path("spool.db")
    disk_cap_bytes: int = 1 << 30
    seq_block: int = 10_000  # seqs reserved per durable write (bounds a crash's gap record)


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

    def interval_ms(self, group: str) -> int:
        return dict(self.groups).get(group, self.poll_interval_ms)


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


# section name -> parser(list of tables or a table, Where) -> parsed value
CONNECTOR_PARSERS: dict[str, Callable[[Any, Where], Any]] = {}


def _tag(t: dict[str, Any], w: Where) -> ModbusTag:
    _no_unknown(t, w, set(ModbusTag.__dataclass_fields__))
    table = _choice(t, w, "table", REGISTER_TABLES + BIT_TABLES, "holding")
    bits = table in BIT_TABLES
    types = ("bool",) if bits else tuple(REGISTER_TYPES)
    return ModbusTag(
        name=_get(t, w, "name", str),
        address=_int(t, w, "address", 0, 65535),
        table=table,
        type=_choice(t, w, "type", types, "bool" if bits else "float32"),
        word_order=_choice(t, w, "word_order", ("big", "little"), "big"),
        byte_order=_choice(t, w, "byte_order", ("big", "little"), "big"),
        scale=_get(t, w, "scale", float, 1.0),
        offset=_get(t, w, "offset", float, 0.0),
        unit=_get(t, w, "unit", str, ""),
        group=_get(t, w, "group", str, "default"),
    )


def _modbus(t: dict[str, Any], w: Where) -> ModbusDeviceConfig:
    _no_unknown(t, w, set(ModbusDeviceConfig.__dataclass_fields__))
    raw_tags = _get(t, w, "tags", list, [])
    if not raw_tags:
        raise w.error("tags", "a Modbus device needs at least one [[modbus.tags]]")
    tags = tuple(_tag(x, w.child(f"tags[{i}]")) for i, x in enumerate(raw_tags))
    names = [x.name for x in tags]
    if len(set(names)) != len(names):
        raise w.error("tags", "tag names must be unique within a device")
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
    )


_BUS_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize", "timeout_ms")


def _check_shared_buses(devices: tuple[ModbusDeviceConfig, ...], root: Where) -> None:
    """RTU devices on one ``serial_port`` share one line, so they must agree on its settings."""
    first: dict[str, tuple[int, ModbusDeviceConfig]] = {}
    for i, d in enumerate(devices):
        if d.transport != "rtu":
            continue
        if d.serial_port not in first:
            first[d.serial_port] = (i, d)
            continue
        j, other = first[d.serial_port]
        for key in _BUS_SETTINGS:
            if getattr(d, key) != getattr(other, key):
                raise root.error(
                    f"modbus[{i}].{key}",
                    f"{getattr(d, key)!r} differs from modbus[{j}] ({getattr(other, key)!r}) "
                    f"on the same serial_port {d.serial_port}: one bus has one setting",
                )


def parse_config(text: str, path: str = "<config>", *, base_dir: Path | None = None) -> AgentConfig:
    """Parse and validate config text; relative paths are taken from ``base_dir``."""
    import agent.connectors.registry  # noqa: F401, PLC0415 - registers the connector sections

    root = Where(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # 3.11's TOMLDecodeError has no lineno attribute; its message says "(at line N, ...)"
        m = re.search(r"at line (\d+)", str(err))
        raise ConfigError(path, "<toml>", int(m.group(1)) if m else None, str(err)) from err
    known = {"device", "hub", "window", "spool", "modbus", "metrics", "model", *CONNECTOR_PARSERS}
    _no_unknown(doc, root, known)
    base = base_dir or Path(path).resolve().parent
    dev_t = _get(doc, root, "device", dict)
    w = root.child("device")
    _no_unknown(dev_t, w, {"name", "signer", "key_file", "tcti"})
    device = DeviceConfig(
        name=_get(dev_t, w, "name", str),
        signer=_choice(dev_t, w, "signer", ("software", "tpm"), "software"),
        key_file=base / _get(dev_t, w, "key_file", str, "device.key"),
        tcti=_get(dev_t, w, "tcti", str, "device:/dev/tpmrm0"),
    )
    hub_t = _get(doc, root, "hub", dict, {})
    w = root.child("hub")
    _no_unknown(hub_t, w, {"url", "timeout_s", "batch_proofs", "admin_token", "log_key"})
    url = _get(hub_t, w, "url", str, None)
    if url is not None and not re.match(r"https?://[^/\s]+", url):
        raise w.error("url", f"{url!r} is not an http(s) URL")
    hub = HubConfig(
        url=url.rstrip("/") if url else None,
        timeout_s=_get(hub_t, w, "timeout_s", float, 10.0),
        batch_proofs=_int(hub_t, w, "batch_proofs", 1, 256, 32),
        admin_token=_get(hub_t, w, "admin_token", str, None),
        log_key=base / log_key if (log_key := _get(hub_t, w, "log_key", str, None)) else None,
    )
    win_t = _get(doc, root, "window", dict, {})
    w = root.child("window")
    _no_unknown(win_t, w, {"max_readings", "max_ms", "max_pending_readings"})
    window = WindowConfig(
        max_readings=_int(win_t, w, "max_readings", 1, 65_536, 1000),
        max_ms=_int(win_t, w, "max_ms", 1, 3_600_000, 1000),
        max_pending_readings=_int(win_t, w, "max_pending_readings", 1000, 50_000_000, 1_000_000),
    )
    sp_t = _get(doc, root, "spool", dict, {})
    w = root.child("spool")
    _no_unknown(sp_t, w, {"path", "disk_cap_bytes", "seq_block"})
    spool = SpoolConfig(
        path=base / _get(sp_t, w, "path", str, "spool.db"),
        disk_cap_bytes=_int(sp_t, w, "disk_cap_bytes", 1 << 20, 1 << 50, 1 << 30),
        seq_block=_int(sp_t, w, "seq_block", 1, 10_000_000, 10_000),
    )
    modbus = tuple(
        _modbus(t, root.child(f"modbus[{i}]"))
        for i, t in enumerate(_get(doc, root, "modbus", list, []))
    )
    _check_shared_buses(modbus, root)
    metrics_t = _get(doc, root, "metrics", dict, {})
    w = root.child("metrics")
    _no_unknown(metrics_t, w, {"port", "host"})
    # 0 asks the OS for a free port (tests); the default host keeps /metrics off the plant LAN
    metrics_port = _int(metrics_t, w, "port", 0, 65535, None) if "port" in metrics_t else None
    metrics_host = _get(metrics_t, w, "host", str, "127.0.0.1")
    connectors = {
        name: parse(doc[name], root.child(name))
        for name, parse in CONNECTOR_PARSERS.items()
        if name in doc
    }
    model_t = _get(doc, root, "model", dict, {})
    _no_unknown(model_t, root.child("model"), {"manifest"})
    manifest = _get(model_t, root.child("model"), "manifest", str, None)
    if not modbus and not connectors:
        raise root.error("modbus", "no connector configured: add a [[modbus]] section or another")
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
    )


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(path), "<file>", None, f"cannot read: {err.strerror}") from err
    return parse_config(text, str(path), base_dir=path.resolve().parent)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
