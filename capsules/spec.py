"""A capsule file into frozen values: TOML -> JSON Schema -> cross-field checks -> ``Capsule``.

Every refusal is a ``CapsuleInvalid`` naming the dotted key and the file line (lines come
from ``agent.config.Where``, the agent's own TOML line map), and the first refusal stops
the load: nothing half-checked is ever returned. Pure: text in, value out.
"""

from __future__ import annotations

import hashlib
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from agent.config import Where
from capsules.errors import CapsuleInvalid
from capsules.facts import FACTS
from capsules.schema import AREAS, SCHEMA
from capsules.units import UnitMismatch, check_unit
from models_onnx.recipes import KINDS

__all__ = [
    "Assumption",
    "Capsule",
    "Connector",
    "Deliverable",
    "EdgePolicy",
    "FaultSpec",
    "Feasibility",
    "Job",
    "ModelRecipe",
    "ProofPipeline",
    "Section",
    "Sentence",
    "Signal",
    "SimulatorProfile",
    "parse_capsule",
]

# the simulated faults each simulator knows (capsules/sims/)
SIM_FAULTS: Mapping[str, frozenset[str]] = {
    "profile": frozenset({"step", "drift", "spike", "stuck", "noise"}),
    "magnets": frozenset({"under_magnetised", "cracked_magnet", "oven_drift"}),
    "ndt": frozenset({"flaw", "couplant_loss", "gauge_drift", "ae_burst"}),
    "logistics": frozenset({"supplier_delay", "demand_surge", "dock_congestion", "picker_absence"}),
}
_INT_LIMITS = {"int16": (-32768, 32767), "uint16": (0, 65535)}
_PROTOCOL_KEYS = {
    "modbus": frozenset({"address", "table", "type", "scale", "offset"}),
    "opcua": frozenset({"node"}),
    "mqtt": frozenset({"topic", "pointer"}),
}
_REQUIRED_KEY = {"modbus": "address", "opcua": "node", "mqtt": "topic"}
Refuse = Callable[[str, str], CapsuleInvalid]  # (dotted key, message) -> the error to raise


@dataclass(frozen=True, slots=True)
class Signal:
    """One measured signal: what it measures, in which unit, its ranges and sampling rate."""

    name: str
    quantity: str
    unit: str
    range: tuple[float, float]  # what the instrument or register can represent
    normal: tuple[float, float]  # the band of normal operation
    sample_hz: float
    description: str = ""
    address: int | None = None
    table: str = "holding"
    type: str = "float32"
    scale: float = 1.0
    offset: float = 0.0
    node: str | None = None
    topic: str | None = None
    pointer: str = ""

    @property
    def interval_ms(self) -> int:
        """The poll interval that samples at ``sample_hz``, within the agent's 10 ms floor."""
        return max(10, round(1000.0 / self.sample_hz))


@dataclass(frozen=True, slots=True)
class Connector:
    name: str
    protocol: str
    signals: tuple[Signal, ...]
    device_id: int = 1
    description: str = ""


@dataclass(frozen=True, slots=True)
class ModelRecipe:
    family: str
    signals: tuple[str, ...]
    lags: int = 2
    span: int = 10
    limit: str = "pot3"  # models_onnx.limits rule on the smoothed training score
    explained: float = 0.85
    train_rows: int = 3000


@dataclass(frozen=True, slots=True)
class ProofPipeline:
    window_readings: int
    window_ms: int
    statistics: tuple[str, ...]
    drift_test: str
    report_cadence: str


@dataclass(frozen=True, slots=True)
class EdgePolicy:
    disk_cap_mib: int
    shedding: str
    update_channel: str
    upload_batch: int = 32


@dataclass(frozen=True, slots=True)
class Job:
    kind: str
    cadence: str
    min_sites: int = 1
    trials: int = 50
    objective: str = ""


@dataclass(frozen=True, slots=True)
class Section:
    id: str
    title: str
    source: str


@dataclass(frozen=True, slots=True)
class Sentence:
    fact: str
    text: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.text) if f)


@dataclass(frozen=True, slots=True)
class Deliverable:
    title: str
    sections: tuple[Section, ...]
    widget_kind: str
    widget_signals: tuple[str, ...]
    narrative: tuple[Sentence, ...]


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str
    start_s: float
    duration_s: float
    severity: float = 1.0
    signal: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class SimulatorProfile:
    kind: str
    seed: int
    period_s: float = 0.1
    faults: tuple[FaultSpec, ...] = ()
    demo_speed: float = 1.0


@dataclass(frozen=True, slots=True)
class Assumption:
    """A triangular distribution (low, mode, high) and where its numbers come from."""

    name: str
    low: float
    mode: float
    high: float
    basis: str  # a source, or text starting "assumption"
    per: str = ""
    twin: str = ""  # scale by this twin outcome (e.g. "detected_faults_per_year")


@dataclass(frozen=True, slots=True)
class Feasibility:
    currency: str
    capex: tuple[Assumption, ...]
    opex_per_year: tuple[Assumption, ...]
    benefits: tuple[Assumption, ...]
    horizon_years: int = 5
    discount_rate: float = 0.08


@dataclass(frozen=True, slots=True)
class Capsule:
    name: str
    version: str
    area: int
    phase: str
    title: str
    summary: str
    connectors: tuple[Connector, ...]
    model: ModelRecipe
    proof: ProofPipeline
    edge: EdgePolicy
    jobs: tuple[Job, ...]
    deliverable: Deliverable
    simulator: SimulatorProfile
    feasibility: Feasibility
    priority: bool
    source: str  # the file it came from, for messages
    digest: str  # SHA-256 of the capsule.toml bytes, hex

    @property
    def area_name(self) -> str:
        return AREAS[self.area - 1]

    @property
    def signals(self) -> tuple[Signal, ...]:
        return tuple(s for c in self.connectors for s in c.signals)

    def signal(self, name: str) -> Signal:
        return next(s for s in self.signals if s.name == name)


def _key(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_error(err: jsonschema.ValidationError) -> tuple[str, str]:
    """The dotted key and a message for jsonschema's error; unknown keys name the key itself."""
    key = _key(err.absolute_path)
    schema = err.schema if isinstance(err.schema, Mapping) else {}
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = set(schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in known)
        if extra:
            name = f"{key}.{extra[0]}" if key else extra[0]
            return name, f"unknown key (known: {', '.join(sorted(known))})"
    if err.validator == "required" and isinstance(err.validator_value, list):
        present = err.instance if isinstance(err.instance, dict) else {}
        missing = [k for k in err.validator_value if k not in present]
        if missing:
            return (f"{key}.{missing[0]}" if key else missing[0]), "missing"
    return key or "<root>", err.message


_VALIDATOR = jsonschema.Draft202012Validator(dict(SCHEMA))


def _pair(v: list[float]) -> tuple[float, float]:
    return float(v[0]), float(v[1])


def parse_capsule(data: bytes, path: str = "<capsule>") -> Capsule:
    """Parse and check one ``capsule.toml``; raise ``CapsuleInvalid`` naming key and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CapsuleInvalid(path, "<file>", None, f"not UTF-8 at byte {err.start}") from err
    where = Where(path, text)

    def refuse(key: str, message: str) -> CapsuleInvalid:
        return CapsuleInvalid(path, key, where.line_of(key), message)

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"at line (\d+)", str(err))
        raise CapsuleInvalid(path, "<toml>", int(m.group(1)) if m else None, str(err)) from err
    # (1) shape: of the schema's errors, the one nearest the top of the file
    found = [_schema_error(e) for e in _VALIDATOR.iter_errors(doc)]
    if found:
        key, message = min(found, key=lambda km: (where.line_of(km[0]) or 0, km[0]))
        raise refuse(key, message)
    capsule = _build(doc, path, hashlib.sha256(data).hexdigest())
    # (2) what the schema cannot say
    _check(capsule, refuse)
    return capsule


def _build(doc: dict[str, Any], path: str, digest: str) -> Capsule:
    c = doc["capsule"]
    connectors = tuple(
        Connector(
            name=k["name"],
            protocol=k["protocol"],
            device_id=k.get("device_id", 1),
            description=k.get("description", ""),
            signals=tuple(
                Signal(
                    **{**s, "range": _pair(s["range"]), "normal": _pair(s["normal"])},
                )
                for s in k["signals"]
            ),
        )
        for k in doc["connector"]
    )
    m = doc["model"]
    d = doc["deliverable"]
    sim = doc["simulator"]
    feas = doc["feasibility"]
    return Capsule(
        name=c["name"],
        version=c["version"],
        area=c["area"],
        phase=c["phase"],
        title=c["title"],
        summary=c["summary"],
        priority=c.get("priority", False),
        connectors=connectors,
        model=ModelRecipe(**{**m, "signals": tuple(m["signals"])}),
        proof=ProofPipeline(**{**doc["proof"], "statistics": tuple(doc["proof"]["statistics"])}),
        edge=EdgePolicy(**doc["edge"]),
        jobs=tuple(Job(**j) for j in doc["orchestration"]["jobs"]),
        deliverable=Deliverable(
            title=d["title"],
            sections=tuple(Section(**s) for s in d["sections"]),
            widget_kind=d["widget"]["kind"],
            widget_signals=tuple(d["widget"]["signals"]),
            narrative=tuple(Sentence(**s) for s in d["narrative"]),
        ),
        simulator=SimulatorProfile(
            kind=sim["kind"],
            seed=sim["seed"],
            period_s=sim.get("period_s", 0.1),
            demo_speed=sim.get("demo_speed", 1.0),
            faults=tuple(FaultSpec(**f) for f in sim.get("faults", [])),
        ),
        feasibility=Feasibility(
            currency=feas["currency"],
            horizon_years=feas.get("horizon_years", 5),
            discount_rate=feas.get("discount_rate", 0.08),
            capex=tuple(Assumption(**a) for a in feas["capex"]),
            opex_per_year=tuple(Assumption(**a) for a in feas["opex_per_year"]),
            benefits=tuple(Assumption(**a) for a in feas["benefits"]),
        ),
        source=path,
        digest=digest,
    )


def _check(cap: Capsule, refuse: Refuse) -> None:  # noqa: PLR0912 - one cross-field rule a branch, each naming its key
    names: set[str] = set()
    for i, conn in enumerate(cap.connectors):
        _check_connector(conn, f"connector[{i}]", names, refuse)
    m = cap.model
    if m.family not in KINDS:
        raise refuse("model.family", f"{m.family!r} is not a model family ({', '.join(KINDS)})")
    for j, name in enumerate(m.signals):
        if name not in names:
            raise refuse(f"model.signals[{j}]", f"{name!r} is not a signal of this capsule")
    if cap.proof.window_readings < len(names):
        raise refuse(
            "proof.window_readings",
            f"{cap.proof.window_readings} is fewer than the {len(names)} signals of one poll",
        )
    for j, job in enumerate(cap.jobs):
        if job.kind == "m2n2_merge" and job.min_sites < 2:
            raise refuse(f"orchestration.jobs[{j}].min_sites", "a merge needs at least 2 sites")
    d = cap.deliverable
    for j, name in enumerate(d.widget_signals):
        if name not in names:
            raise refuse(f"deliverable.widget.signals[{j}]", f"{name!r} is not a signal")
    for j, s in enumerate(d.narrative):
        key = f"deliverable.narrative[{j}]"
        if s.fact not in FACTS:
            raise refuse(f"{key}.fact", f"{s.fact!r} is not a fact ({', '.join(FACTS)})")
        try:
            fields = s.fields
        except ValueError as err:
            raise refuse(f"{key}.text", f"not a template: {err}") from err
        for f in fields:
            if f not in FACTS[s.fact]:
                raise refuse(
                    f"{key}.text",
                    f"{{{f}}} is not a field of fact {s.fact!r} ({', '.join(FACTS[s.fact])})",
                )
    sim = cap.simulator
    for j, fault in enumerate(sim.faults):
        key = f"simulator.faults[{j}]"
        if fault.kind not in SIM_FAULTS[sim.kind]:
            known = ", ".join(sorted(SIM_FAULTS[sim.kind]))
            raise refuse(f"{key}.kind", f"{fault.kind!r} is not a {sim.kind} fault ({known})")
        if fault.signal and fault.signal not in names:
            raise refuse(f"{key}.signal", f"{fault.signal!r} is not a signal")
        if sim.kind == "profile" and not fault.signal:
            raise refuse(f"{key}.signal", "a profile fault names the signal it hits")
    twins = {"detection_rate", "false_alarms_per_h"}  # what capsules/detect.py measures
    for part in ("capex", "opex_per_year", "benefits"):
        for j, a in enumerate(getattr(cap.feasibility, part)):
            if not a.low <= a.mode <= a.high:
                raise refuse(
                    f"feasibility.{part}[{j}].mode",
                    f"needs low <= mode <= high, got {a.low}, {a.mode}, {a.high}",
                )
            if a.twin and a.twin not in twins:
                raise refuse(f"feasibility.{part}[{j}].twin", f"{a.twin!r} is not measured")


def _check_connector(conn: Connector, key: str, names: set[str], refuse: Refuse) -> None:
    used: dict[tuple[str, int], str] = {}
    for j, s in enumerate(conn.signals):
        k = f"{key}.signals[{j}]"
        if s.name in names:
            raise refuse(f"{k}.name", f"{s.name!r} is already a signal: names are unique")
        names.add(s.name)
        try:
            check_unit(s.unit, s.quantity)
        except UnitMismatch as err:
            raise refuse(f"{k}.unit", str(err)) from err
        lo, hi = s.range
        if not lo < hi:
            raise refuse(f"{k}.range", f"low {lo:g} is not below high {hi:g}")
        nlo, nhi = s.normal
        if not nlo < nhi:
            raise refuse(f"{k}.normal", f"low {nlo:g} is not below high {nhi:g}")
        if nlo < lo or nhi > hi:
            raise refuse(
                f"{k}.normal",
                f"[{nlo:g}, {nhi:g}] reaches outside range [{lo:g}, {hi:g}]",
            )
        _check_protocol_keys(conn.protocol, s, k, refuse)
        if conn.protocol == "modbus" and s.address is not None:
            width = 2 if s.type == "float32" else 1
            for a in range(s.address, s.address + width):
                if (s.table, a) in used:
                    raise refuse(
                        f"{k}.address", f"register {s.table} {a} is also {used[s.table, a]!r}"
                    )
                used[s.table, a] = s.name
            if s.type in _INT_LIMITS:
                rlo, rhi = _INT_LIMITS[s.type]
                vlo, vhi = rlo * s.scale + s.offset, rhi * s.scale + s.offset
                if lo < vlo or hi > vhi:
                    raise refuse(
                        f"{k}.range",
                        f"[{lo:g}, {hi:g}] does not fit a {s.type} at scale {s.scale:g} "
                        f"offset {s.offset:g} ([{vlo:g}, {vhi:g}])",
                    )


def _check_protocol_keys(protocol: str, s: Signal, key: str, refuse: Refuse) -> None:
    given = {
        "address": s.address is not None,
        "node": s.node is not None,
        "topic": s.topic is not None,
        "pointer": bool(s.pointer),
        "table": s.table != "holding",
        "type": s.type != "float32",
        "scale": s.scale != 1.0,
        "offset": s.offset != 0.0,
    }
    for other, keys in _PROTOCOL_KEYS.items():
        if other == protocol:
            continue
        for name in sorted(keys):
            if given[name]:
                raise refuse(f"{key}.{name}", f"a {other} key, but the connector is {protocol}")
    if not given[_REQUIRED_KEY[protocol]]:
        raise refuse(f"{key}.{_REQUIRED_KEY[protocol]}", f"missing (a {protocol} signal needs it)")
