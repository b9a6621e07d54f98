"""System rig files: the real agent process with its peers (the simulated PLC behind a fault
proxy, firmware nodes on a private broker), a fault schedule in wall seconds, and checks.

Pure: a TOML file becomes a ``SystemRig`` or a ``RigError`` naming the file, line and key.
Everything that can be refused is refused here, before anything starts: an unknown fault, a
fault that runs past the rig's end or overlaps another on the same target, a node or sensor
the rig does not have. (A fixed port already in use is checked by the runner's preflight,
also before anything starts.) The format, by example::

    [system]
    duration_s = 30          # wall seconds of faults and traffic, after everything is up
    settle_s = 8             # then: faults healed, node rings drain, the agent stops cleanly
    nodes = ["n1", "n2"]     # firmware nodes (MicroPython unix port), sensors temp/pressure/flow
    plc = true               # the simulated pump plant over Modbus TCP, through a fault proxy
    window_ms = 200

    [[inject]]
    kind = "agent_kill9"     # INJECT_KINDS
    at_s = 10
    duration_s = 2           # how long the fault (or the outage it causes) lasts
    repeat = 3               # optional: 3 times, every_s apart
    every_s = 5

    [[check]]
    kind = "committed_kept"  # CHECK_KINDS
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil_tests.rig import _get, _no_unknown, _Where, read_toml

__all__ = [
    "CHECK_KINDS",
    "INJECT_KINDS",
    "Check",
    "Hardware",
    "Injection",
    "SystemRig",
    "load_system_rig",
]

NODE_SENSORS = ("temp", "pressure", "flow")  # hil_tests.nodes.default_sensors
# kind -> (target class, extra keys it takes)
INJECT_KINDS: Mapping[str, tuple[str, frozenset[str]]] = {
    "sensor_stuck": ("sensor", frozenset({"node", "sensor", "value"})),
    "sensor_drift": ("sensor", frozenset({"node", "sensor", "rate"})),
    "sensor_spike": ("sensor", frozenset({"node", "sensor", "size", "p"})),
    "sensor_noise": ("sensor", frozenset({"node", "sensor", "size"})),
    "slave_dead": ("plc", frozenset()),
    "slave_slow": ("plc", frozenset({"delay_ms"})),
    "slave_exception": ("plc", frozenset({"code"})),
    "plc_latency": ("plc-link", frozenset({"latency_ms"})),
    "plc_loss": ("plc-link", frozenset({"loss"})),
    "plc_partition": ("plc-link", frozenset()),
    "broker_restart": ("broker", frozenset()),
    "agent_kill9": ("agent", frozenset()),
    "agent_sigterm": ("agent", frozenset()),
    "node_reboot": ("node", frozenset({"node"})),
    # over the node's serial REPL (Ctrl-C, raw REPL, reboot), with node_repl = true
    "node_repl_reboot": ("node", frozenset({"node"})),
    "node_replay": ("replay", frozenset({"node"})),
    "plant_fault": ("plant", frozenset({"fault", "severity"})),  # the pump itself fails
    "disk_full": ("disk", frozenset()),  # the spool's own small file system fills up
    "hub_latency": ("hub-link", frozenset({"latency_ms"})),
    "hub_loss": ("hub-link", frozenset({"loss"})),
    "hub_partition": ("hub-link", frozenset()),
    "hub_restart": ("hub", frozenset()),
    # the SIMULATED TPM (swtpm) the agent signs with: power-cycled (a TPM Reset: off for
    # duration_s), or its socket cut (nothing answers for duration_s, no reset)
    "tpm_reset": ("tpm", frozenset()),
    "tpm_unavailable": ("tpm", frozenset()),
    # the agent's wall clock steps by offset_s (seconds, + or -) and steps back at the end,
    # as a bad RTC and then NTP would do it (libfaketime; monotonic time is left alone)
    "clock_jump": ("clock", frozenset({"offset_s"})),
}
PLANT_FAULTS = ("valve_closing", "cavitation", "bearing_wear")  # hil_tests.plant.FaultKind
CHECK_KINDS: Mapping[str, frozenset[str]] = {
    "committed_kept": frozenset(),  # windows committed before each kill are still there
    "windows_verify": frozenset(),  # signatures, chain, gap coverage, roots from stored readings
    "node_seqs_complete": frozenset({"max_lost_share"}),
    "gaps_signed": frozenset({"min"}),  # gap records (key 15) after agent kills
    "node_refusals": frozenset({"reason", "min"}),
    # no PLC readings inside that fault's window; some before it and within recover_s after
    "plc_outage_visible": frozenset({"inject", "recover_s"}),
    # key 16 covers the fault; late_s: how late its end may be (a reconnect backoff)
    "source_gap": frozenset({"inject", "source", "reason", "slack_s", "late_s"}),
    # a source that produced all along (a node across clock jumps) is never stated missing
    "no_source_gap": frozenset({"source"}),
    "signal": frozenset({"signal", "window", "stat", "above", "below"}),
    "anomaly_within": frozenset({"inject", "within_s"}),  # the model flags a plant fault
    "hub_has_all": frozenset(),  # every window the agent committed is in the hub's log
    "receipts_verify": frozenset({"inject"}),  # hub receipts either side of a fault, offline
    "rss_below_mb": frozenset({"limit"}),
    "disk_below_mb": frozenset({"limit"}),
    # readings went on during a TPM fault and were signed once it was back; the proofs'
    # TPM clock shows a reset after tpm_reset
    "tpm_outage": frozenset({"inject"}),
    "node_boots": frozenset({"node", "min"}),  # the spool holds readings of >= min boots
    # the agent-stamped readings step by the jump and back; the chain is judged apart
    "clock_jump_visible": frozenset({"inject"}),
}
SIGNAL_STATS = ("mean", "stdev", "max", "min", "count")
PLC_SETTLE_S = 1.5  # a Modbus poll's timeout and reconnect, at an outage's start
PLC_EDGE_S = 1.0  # a poll sent up to its 1 s timeout before the heal is answered after it,
# stamped when it was sent


@dataclass(frozen=True, slots=True)
class Injection:
    index: int  # its [[inject]] table, for reports and errors
    kind: str
    at_s: float
    duration_s: float
    node: str = ""
    sensor: str = ""
    params: tuple[tuple[str, float], ...] = ()
    fault: str = ""  # plant_fault: which of PLANT_FAULTS

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    def param(self, key: str, default: float) -> float:
        return dict(self.params).get(key, default)


@dataclass(frozen=True, slots=True)
class Check:
    index: int
    kind: str
    name: str
    signal: str = ""
    window: tuple[float, float] = (0.0, 0.0)
    stat: str = "mean"
    above: float | None = None
    below: float | None = None
    limit: float = 0.0
    reason: str = ""
    minimum: int = 0
    inject: int = -1
    max_lost_share: float = 0.0
    source: str = ""
    slack_s: float = 2.0
    late_s: float = 2.0
    within_s: float = 0.0
    # the agent leaves a silent PLC alone for breaker_open_ms (5 s) and reconnects with a
    # growing backoff: readings may take this long to come back after the fault heals
    recover_s: float = 12.0


@dataclass(frozen=True, slots=True)
class Hardware:
    """Real equipment in place of a simulator (``[hardware]``); empty fields stay simulated."""

    plc_host: str = ""
    plc_port: int = 0
    plc_tags: Path | None = None  # its [[modbus]] section, agent config form
    plc_signals: tuple[str, ...] = ()
    broker_host: str = ""
    broker_port: int = 0
    nodes_dir: Path | None = None
    node_topic: str = ""
    tpm: str = ""  # a TCTI: the gateway's TPM signs

    @property
    def real_plc(self) -> bool:
        return bool(self.plc_host)

    @property
    def real_nodes(self) -> bool:
        return bool(self.broker_host)


@dataclass(frozen=True, slots=True)
class SystemRig:
    path: Path
    duration_s: float
    settle_s: float
    nodes: tuple[str, ...]
    plc: bool
    window_ms: int
    node_period_ms: int
    plc_poll_ms: int
    broker_port: int
    plc_port: int
    seed: int
    model: bool  # the agent scores windows with the pump's shadow-twin model
    spool_mb: int  # > 0: the spool lives on a tmpfs of this size (needs root), for disk_full
    hub: bool  # a hub (`factoryops hub serve`) behind a second fault proxy
    tpm: bool  # the agent signs with a SIMULATED TPM (swtpm) behind a fault proxy
    node_repl: bool  # nodes boot from MicroPython's REPL on a pty (node_repl_reboot works)
    injections: tuple[Injection, ...]  # expanded: one per repeat, sorted by time
    checks: tuple[Check, ...]
    lines: Mapping[str, int]
    hardware: Hardware = Hardware()
    # how the agent reads the plant: Modbus TCP or OPC UA (through the fault proxy), or
    # Modbus RTU on a serial line (a socat pty pair: no proxy, slave faults only)
    plc_transport: str = "tcp"
    replay: Path | None = None  # a SKAB CSV the plant replays instead of the pump model

    def where(self, key: str) -> _Where:
        return _Where(self.path, key, self.lines)


def is_system_rig(doc: Mapping[str, Any]) -> bool:
    return "system" in doc


def load_system_rig(path: Path) -> SystemRig:
    doc, lines = read_toml(path)
    root = _Where(path, "", lines)
    _no_unknown(doc, root, {"system", "hardware", "inject", "check"})
    w = root.at("system")
    t = _get(doc, root, "system", dict)
    _no_unknown(
        t,
        w,
        {"duration_s", "settle_s", "nodes", "plc", "window_ms", "node_period_ms", "plc_poll_ms"}
        | {"broker_port", "plc_port", "seed", "model", "spool_mb", "hub", "tpm"}
        | {"plc_transport", "replay", "node_repl"},
    )
    duration = _get(t, w, "duration_s", float)
    if not 1 <= duration <= 86_400:
        raise w.child("duration_s").error(f"expected 1..86400 wall seconds, got {duration:g}")
    nodes = tuple(_get(t, w, "nodes", list, []))
    if not all(isinstance(n, str) and n.replace("-", "").isalnum() for n in nodes):
        raise w.child("nodes").error("expected a list of node ids (letters, digits, '-')")
    if len(set(nodes)) != len(nodes):
        raise w.child("nodes").error("a node id appears twice")
    plc = _get(t, w, "plc", bool, False)
    if not nodes and not plc:
        raise w.error("nothing to run: give nodes = [...] or plc = true")
    ports = {}
    for key in ("broker_port", "plc_port"):
        port = _get(t, w, key, int, 0)
        if not 0 <= port <= 65535:
            raise w.child(key).error(f"expected 0 (any free) or 1..65535, got {port}")
        ports[key] = port
    rig = SystemRig(
        path=path,
        duration_s=duration,
        settle_s=_get(t, w, "settle_s", float, 8.0),
        nodes=nodes,
        plc=plc,
        window_ms=_get(t, w, "window_ms", int, 200),
        node_period_ms=_get(t, w, "node_period_ms", int, 100),
        plc_poll_ms=_get(t, w, "plc_poll_ms", int, 50),
        broker_port=ports["broker_port"],
        plc_port=ports["plc_port"],
        seed=_get(t, w, "seed", int, 0),
        model=_get(t, w, "model", bool, False),
        spool_mb=_get(t, w, "spool_mb", int, 0),
        hub=_get(t, w, "hub", bool, False),
        tpm=_get(t, w, "tpm", bool, False),
        node_repl=_get(t, w, "node_repl", bool, False),
        plc_transport=_plc_transport(t, w, plc),
        replay=_replay(t, w, path),
        injections=(),
        checks=(),
        lines=lines,
        hardware=_hardware(_get(doc, root, "hardware", dict, {}), root.at("hardware"), path),
    )
    injections = _injections(doc, root, rig)
    checks = tuple(
        _check(c, root.at(f"check[{i}]"), i, rig, injections)
        for i, c in enumerate(_tables(doc, root, "check"))
    )
    if not checks:
        raise root.at("check").error("a rig needs at least one [[check]] table")
    return dataclasses.replace(rig, injections=injections, checks=checks)


PLC_TRANSPORTS = ("tcp", "rtu", "opcua")


def _plc_transport(t: Mapping[str, Any], w: _Where, plc: bool) -> str:
    transport: str = _get(t, w, "plc_transport", str, "tcp")
    if transport not in PLC_TRANSPORTS:
        raise w.child("plc_transport").error(f"{transport!r} is not one of {list(PLC_TRANSPORTS)}")
    if transport != "tcp" and not plc:
        raise w.child("plc_transport").error("give plc = true: there is no PLC to reach")
    return transport


def _replay(t: Mapping[str, Any], w: _Where, path: Path) -> Path | None:
    if "replay" not in t:
        return None
    replay: Path = (path.parent / _get(t, w, "replay", str)).resolve()
    if not replay.is_file():
        raise w.child("replay").error(f"{replay} is not a file (a SKAB CSV, relative to the rig)")
    return replay


def _address(t: Mapping[str, Any], w: _Where, key: str, scheme: str = "") -> tuple[str, int]:
    text: str = _get(t, w, key, str)
    m = re.fullmatch(rf"{scheme}([^:/\s]+):(\d{{1,5}})/?", text)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise w.child(key).error(f"{text!r} is not {scheme}host:port")
    return m.group(1), int(m.group(2))


def _hardware(t: Mapping[str, Any], w: _Where, path: Path) -> Hardware:
    _no_unknown(t, w, {"plc", "plc_tags", "broker", "nodes_dir", "node_topic", "tpm"})
    out: dict[str, Any] = {}
    if "plc" in t:
        out["plc_host"], out["plc_port"] = _address(t, w, "plc")
        tags = path.parent / _get(t, w, "plc_tags", str)
        try:
            doc = tomllib.loads(tags.read_text(encoding="utf-8"))
            names = tuple(tag["name"] for tag in doc["modbus"][0]["tags"])
        except (OSError, tomllib.TOMLDecodeError, KeyError, IndexError, TypeError) as err:
            raise w.child("plc_tags").error(
                f"{tags}: expected an agent config [[modbus]] section with tags ({err})"
            ) from err
        out |= {"plc_tags": tags, "plc_signals": names}
    elif "plc_tags" in t:
        raise w.child("plc_tags").error('give plc = "host:port" with it')
    if "broker" in t:
        out["broker_host"], out["broker_port"] = _address(t, w, "broker", "mqtt://")
        nodes_dir = path.parent / _get(t, w, "nodes_dir", str)
        if not nodes_dir.is_dir():
            raise w.child("nodes_dir").error(f"{nodes_dir} is not a folder of node keys")
        out |= {"nodes_dir": nodes_dir, "node_topic": _get(t, w, "node_topic", str)}
    if "tpm" in t:
        out["tpm"] = _get(t, w, "tpm", str)
    return Hardware(**out)


def _tables(doc: Mapping[str, Any], root: _Where, key: str) -> list[dict[str, Any]]:
    v = doc.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise root.at(key).error(f"expected an array of tables ([[{key}]])")
    if len(v) > 10_000:
        raise root.at(key).error(f"{len(v)} entries, at most 10000")
    return v


def _injections(  # noqa: PLR0912, PLR0915 - one validation a fault kind, each naming key and line
    doc: Mapping[str, Any], root: _Where, rig: SystemRig
) -> tuple[Injection, ...]:
    out: list[Injection] = []
    busy: dict[str, list[tuple[float, float, int]]] = {}
    for i, t in enumerate(_tables(doc, root, "inject")):
        w = root.at(f"inject[{i}]")
        kind = _get(t, w, "kind", str)
        if kind not in INJECT_KINDS:
            raise w.child("kind").error(f"unknown fault {kind!r}; one of {sorted(INJECT_KINDS)}")
        target, extra = INJECT_KINDS[kind]
        _no_unknown(t, w, {"kind", "at_s", "duration_s", "repeat", "every_s"} | extra)
        at = _get(t, w, "at_s", float)
        duration = _get(t, w, "duration_s", float, 0.0 if kind == "node_replay" else 2.0)
        repeat = _get(t, w, "repeat", int, 1)
        every = _get(t, w, "every_s", float, 0.0)
        if at < 0 or duration < 0 or not 1 <= repeat <= 100_000:
            raise w.error("expected at_s >= 0, duration_s >= 0, repeat 1..100000")
        if repeat > 1 and every <= duration:
            raise w.child("every_s").error(
                f"every_s {every:g} must exceed duration_s {duration:g}: repeats would overlap"
            )
        last_end = at + (repeat - 1) * every + duration
        if last_end > rig.duration_s:
            raise w.error(
                f"impossible schedule: the fault ends at {last_end:g} s, after the rig's "
                f"duration_s {rig.duration_s:g}"
            )
        node = _get(t, w, "node", str, "") if "node" in extra else ""
        if "node" in extra and node not in rig.nodes:
            raise w.child("node").error(f"{node!r} is not one of the rig's nodes {list(rig.nodes)}")
        sensor = _get(t, w, "sensor", str, "") if "sensor" in extra else ""
        if "sensor" in extra and sensor not in NODE_SENSORS:
            raise w.child("sensor").error(f"{sensor!r} is not one of {list(NODE_SENSORS)}")
        if target in ("plc", "plc-link") and not rig.plc:
            raise w.child("kind").error("this fault needs plc = true in [system]")
        if target == "plc-link" and rig.plc_transport == "rtu":
            raise w.child("kind").error(
                "a serial line has no TCP link to break: use slave_dead for a pulled cable"
            )
        if target == "plc" and rig.plc_transport == "opcua":
            raise w.child("kind").error(
                f'{kind!r} breaks the Modbus server; with plc_transport = "opcua" break the'
                " link (plc_partition, plc_latency, plc_loss)"
            )
        hw = rig.hardware
        if (
            (target == "plc" and hw.real_plc)
            or (target == "tpm" and hw.tpm)
            or (target in ("sensor", "node", "broker") and hw.real_nodes)
        ):
            raise w.child("kind").error(
                f"{kind!r} needs the simulator: [hardware] names real equipment for it "
                "(network faults, agent stops and replays work on real equipment)"
            )
        if target == "broker" and not rig.nodes:
            raise w.child("kind").error("a broker restart needs nodes in [system]")
        fault = _get(t, w, "fault", str) if kind == "plant_fault" else ""
        if fault and fault not in PLANT_FAULTS:
            raise w.child("fault").error(f"{fault!r} is not one of {list(PLANT_FAULTS)}")
        if target in ("hub", "hub-link") and not rig.hub:
            raise w.child("kind").error("give hub = true in [system]: a hub to break")
        if kind == "node_repl_reboot" and not rig.node_repl:
            raise w.child("kind").error("give node_repl = true in [system]: nodes on a REPL")
        if target == "tpm" and not rig.tpm:
            raise w.child("kind").error("give tpm = true in [system]: a simulated TPM to break")
        if target == "clock" and duration <= 0:
            raise w.child("duration_s").error("a clock jump needs duration_s > 0: it steps back")
        if target == "disk" and not rig.spool_mb:
            raise w.child("kind").error("give spool_mb = N in [system]: a disk to fill")
        if target == "plant" and (not rig.plc or rig.hardware.real_plc or rig.replay):
            raise w.child("kind").error("a plant fault needs the simulated plant (plc = true)")
        params = tuple(
            (k, float(_get(t, w, k, float)))
            for k in sorted(extra - {"node", "sensor", "fault"})
            if k in t
        )
        _check_params(kind, dict(params), w)
        # one fault at a time per target: two partitions of one link cannot both heal
        key = {"sensor": f"{node}.{sensor}", "node": f"node {node}", "replay": f"replay {i}"}.get(
            target, target
        )
        for r in range(repeat):
            start = at + r * every
            for lo, hi, j in busy.get(key, []):
                if start < hi and lo < start + duration:
                    raise w.error(
                        f"impossible schedule: overlaps inject[{j}] on the same target ({key})"
                    )
            busy.setdefault(key, []).append((start, start + duration, i))
            out.append(Injection(i, kind, start, duration, node, sensor, params, fault))
    return tuple(sorted(out, key=lambda j: (j.at_s, j.index)))


def _check_params(kind: str, params: dict[str, float], w: _Where) -> None:
    limits = {"loss": (0.0, 1.0), "latency_ms": (1, 60_000), "delay_ms": (1, 60_000)}
    for key, (lo, hi) in limits.items():
        if key in params and not lo <= params[key] <= hi:
            raise w.child(key).error(f"expected {lo:g}..{hi:g}, got {params[key]:g}")
    if kind == "clock_jump" and not 1 <= abs(params.get("offset_s", 0)) <= 366 * 86_400:
        raise w.child("offset_s").error("expected a jump of 1 s to a year, forward (+) or back (-)")
    if kind == "slave_exception" and params.get("code", 4) not in (1, 2, 3, 4, 5, 6, 8, 10, 11):
        raise w.child("code").error("expected a Modbus exception code (Modbus spec §7)")


def _check(  # noqa: PLR0912, PLR0915 - one validation a check kind, each naming key and line
    t: Mapping[str, Any], w: _Where, i: int, rig: SystemRig, injections: tuple[Injection, ...]
) -> Check:
    kind = _get(t, w, "kind", str)
    if kind not in CHECK_KINDS:
        raise w.child("kind").error(f"unknown check {kind!r}; one of {sorted(CHECK_KINDS)}")
    _no_unknown(t, w, {"kind", "name"} | CHECK_KINDS[kind])
    name = _get(t, w, "name", str, f"check[{i}] {kind}")
    if kind == "signal":
        window = _get(t, w, "window", list)
        if len(window) != 2 or not 0 <= float(window[0]) < float(window[1]) <= rig.duration_s:
            raise w.child("window").error(f"expected [from_s, to_s] within 0..{rig.duration_s:g}")
        stat = _get(t, w, "stat", str, "mean")
        if stat not in SIGNAL_STATS:
            raise w.child("stat").error(f"{stat!r} is not one of {list(SIGNAL_STATS)}")
        above, below = _get(t, w, "above", float, None), _get(t, w, "below", float, None)
        if above is None and below is None:
            raise w.error("give above = X or below = Y")
        return Check(
            i,
            kind,
            name,
            signal=_get(t, w, "signal", str),
            window=(float(window[0]), float(window[1])),
            stat=stat,
            above=above,
            below=below,
        )
    if kind in ("rss_below_mb", "disk_below_mb"):
        limit = _get(t, w, "limit", float)
        if limit <= 0:
            raise w.child("limit").error("expected a positive number of MB")
        return Check(i, kind, name, limit=limit)
    if kind in ("node_refusals", "gaps_signed"):
        return Check(
            i, kind, name, reason=_get(t, w, "reason", str, ""), minimum=_get(t, w, "min", int, 1)
        )
    if kind == "plc_outage_visible":
        index = _get(t, w, "inject", int)
        if not any(j.index == index and j.kind.startswith(("plc_", "slave_")) for j in injections):
            raise w.child("inject").error(f"inject[{index}] is not a PLC fault of this rig")
        recover = _get(t, w, "recover_s", float, 12.0)
        if not 0 < recover <= 120:
            raise w.child("recover_s").error("expected 0 < recover_s <= 120")
        return Check(i, kind, name, inject=index, recover_s=recover)
    if kind == "anomaly_within":
        index = _get(t, w, "inject", int)
        if not any(j.index == index and j.kind == "plant_fault" for j in injections):
            raise w.child("inject").error(f"inject[{index}] is not a plant_fault of this rig")
        if not rig.model:
            raise w.child("kind").error("give model = true in [system]: the agent needs a model")
        within = _get(t, w, "within_s", float)
        if not 0 < within <= rig.duration_s:
            raise w.child("within_s").error(f"expected 0 < within_s <= {rig.duration_s:g}")
        return Check(i, kind, name, inject=index, within_s=within)
    if kind == "node_boots":
        node = _get(t, w, "node", str)
        if node not in rig.nodes:
            raise w.child("node").error(f"{node!r} is not one of the rig's nodes {list(rig.nodes)}")
        return Check(i, kind, name, source=node, minimum=_get(t, w, "min", int, 2))
    if kind in ("tpm_outage", "clock_jump_visible"):
        index = _get(t, w, "inject", int)
        want = ("tpm_reset", "tpm_unavailable") if kind == "tpm_outage" else ("clock_jump",)
        if not any(j.index == index and j.kind in want for j in injections):
            raise w.child("inject").error(f"inject[{index}] is not a {' or '.join(want)}")
        if kind == "clock_jump_visible" and not rig.plc:
            raise w.child("kind").error("give plc = true: the agent stamps the PLC's readings")
        return Check(i, kind, name, inject=index)
    if kind in ("hub_has_all", "receipts_verify") and not rig.hub:
        raise w.child("kind").error("give hub = true in [system]")
    if kind == "receipts_verify":
        index = _get(t, w, "inject", int)
        if not any(j.index == index for j in injections):
            raise w.child("inject").error(f"no inject[{index}] in this rig")
        return Check(i, kind, name, inject=index)
    if kind == "source_gap":
        index = _get(t, w, "inject", int)
        if not any(j.index == index and j.duration_s > 0 for j in injections):
            raise w.child("inject").error(f"inject[{index}] is not a fault with a duration")
        slack = _get(t, w, "slack_s", float, 2.0)
        late = _get(t, w, "late_s", float, slack)
        for key, value in (("slack_s", slack), ("late_s", late)):
            if not 0 <= value <= 60:
                raise w.child(key).error("expected 0..60 seconds")
        return Check(
            i,
            kind,
            name,
            inject=index,
            source=_get(t, w, "source", str),
            reason=_get(t, w, "reason", str, ""),
            slack_s=slack,
            late_s=late,
        )
    if kind == "no_source_gap":
        source = _get(t, w, "source", str)
        if not source:
            raise w.child("source").error("expected a source name (a node, a device or a signal)")
        return Check(i, kind, name, source=source)
    if kind == "node_seqs_complete":
        share = _get(t, w, "max_lost_share", float, 0.0)
        if not 0 <= share <= 1:
            raise w.child("max_lost_share").error("expected 0..1")
        if not rig.nodes:
            raise w.child("kind").error("this check needs nodes in [system]")
        return Check(i, kind, name, max_lost_share=share)
    return Check(i, kind, name)
