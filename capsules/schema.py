"""The capsule format as data: the JSON Schema of ``capsule.toml``, the 27 areas and the phases.

The schema decides shape (keys, types, enumerations, bounds); ``spec.py`` checks what a
schema cannot say (a unit against its quantity, ranges against each other, names that
must refer to a signal). Every bound here names its unit and, where it has one, its reason.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from models_onnx.limits import LIMIT_RULES

__all__ = [
    "AREAS",
    "DRIFT_TESTS",
    "FORMAT_VERSION",
    "JOB_KINDS",
    "PHASES",
    "PROTOCOLS",
    "SCHEMA",
    "SECTION_SOURCES",
    "SIMULATORS",
    "STATISTICS",
    "WIDGETS",
]

FORMAT_VERSION = 1

# The product brief's 27 factory and supply-chain areas, in its order (area = index + 1).
AREAS: tuple[str, ...] = (
    "Raw material sourcing",
    "Rare-earth refining and metallurgy",
    "Powder processing and additive feedstock",
    "Casting and foundry",
    "Forming (rolling, extrusion)",
    "Machining and precision fabrication",
    "Joining and welding",
    "Surface treatment and coatings",
    "Polymers, composites and moulding",
    "Electronics and PCB assembly",
    "Sensor and embedded systems integration",
    "Permanent magnets and magnetic assemblies",
    "Chemical synthesis and pharma process lines",
    "Battery chemistry and cell production",
    "On-site energy generation and microgrids",
    "Process control and OT/PLC integration",
    "Robotics and material handling (AGV/AMR)",
    "Quality control and NDT (ultrasound, acoustic, imaging)",
    "Testing and certification labs",
    "Packaging and final assembly",
    "Logistics and inbound/outbound routing",
    "Warehousing and inventory optimisation",
    "Waste management and recycling",
    "Compliance and export controls",
    "Workforce and labour flows",
    "Finance and procurement (supplier risk, insurance)",
    "Aftermarket, service and lifetime support",
)

# The brief's factory-design steps, in order.
PHASES: tuple[str, ...] = (
    "get_the_data",
    "understand_the_process",
    "feasibility",
    "concept",
    "technology_design",
    "procure",
    "build",
    "commission",
    "lifetime_support",
)

PROTOCOLS = ("modbus", "opcua", "mqtt")
# what the agent's window statistics hold (micro-proof key 12: [n, mean, M2, min, max])
STATISTICS = ("n", "mean", "m2", "min", "max")
# the drift tests the agent implements (agent/inference.py); "none" turns the test off
DRIFT_TESTS = ("ks_2samp_scores", "none")
JOB_KINDS = ("m2n2_merge", "rnd1_threshold", "rnd1_setpoint")
WIDGETS = ("timeseries", "histogram", "control_chart", "pareto", "sankey", "table")
# where a report section takes its facts from: the hub's site report, the capsule's own
# detectors, the feasibility model, or the narrative
SECTION_SOURCES = ("proofs", "anomalies", "drift", "statistics", "feasibility", "narrative")
# "profile": the generic seeded process (any capsule); the rest are the priority capsules'
# physics- or process-based simulators (capsules/sims/)
SIMULATORS = ("profile", "magnets", "ndt", "logistics")
SHEDDING = ("synced_oldest_first",)  # the only policy the agent's spool implements
CHANNELS = ("stable", "candidate", "pilot")
CADENCES = ("hourly", "shift", "daily", "weekly", "monthly")

_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,47}$"}
# signal names travel in every reading leaf: printable, no control characters, <= 64 chars
_SIGNAL_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9 _./-]{0,63}$"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 400}
_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}


def _obj(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": props,
        "additionalProperties": False,
    }


_SIGNAL = _obj(
    ["name", "quantity", "unit", "range", "normal", "sample_hz"],
    {
        "name": _SIGNAL_NAME,
        "description": _TEXT,
        "quantity": {"type": "string"},
        "unit": {"type": "string", "minLength": 1, "maxLength": 32},
        "range": _PAIR,  # what the instrument or register can represent
        "normal": _PAIR,  # the band of normal operation, inside range
        # 0.0001 Hz is one sample in ~3 h (ledger-like areas); 100 Hz is the agent's
        # fastest Modbus poll (10 ms)
        "sample_hz": {"type": "number", "minimum": 0.0001, "maximum": 100},
        # modbus
        "address": {"type": "integer", "minimum": 0, "maximum": 65535},
        "table": {"enum": ["holding", "input"]},
        "type": {"enum": ["float32", "int16", "uint16"]},
        "scale": {"type": "number", "exclusiveMinimum": 0},
        "offset": {"type": "number"},
        # opcua
        "node": {"type": "string", "minLength": 1},
        # mqtt
        "topic": {"type": "string", "minLength": 1},
        "pointer": {"type": "string"},
    },
)

_CONNECTOR = _obj(
    ["name", "protocol", "signals"],
    {
        "name": _NAME,
        "protocol": {"enum": list(PROTOCOLS)},
        "description": _TEXT,
        "device_id": {"type": "integer", "minimum": 0, "maximum": 247},
        "signals": {"type": "array", "items": _SIGNAL, "minItems": 1, "maxItems": 256},
    },
)

_FAULT = _obj(
    ["kind", "start_s", "duration_s"],
    {
        "kind": {"type": "string", "minLength": 1},
        "signal": _SIGNAL_NAME,
        "start_s": {"type": "number", "minimum": 0},
        "duration_s": {"type": "number", "exclusiveMinimum": 0},
        "severity": {"type": "number", "minimum": 0, "maximum": 1},
        "description": _TEXT,
    },
)

SCHEMA: MappingProxyType[str, Any] = MappingProxyType(
    {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "FactoryOps capsule",
        **_obj(
            [
                "capsule",
                "connector",
                "model",
                "proof",
                "edge",
                "orchestration",
                "deliverable",
                "simulator",
                "feasibility",
            ],
            {
                "capsule": _obj(
                    ["name", "version", "format", "area", "phase", "title", "summary"],
                    {
                        "name": _NAME,
                        "version": {
                            "type": "string",
                            "pattern": r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$",
                        },
                        "format": {"const": FORMAT_VERSION},
                        "area": {"type": "integer", "minimum": 1, "maximum": len(AREAS)},
                        "phase": {"enum": list(PHASES)},
                        "title": _TEXT,
                        "summary": _TEXT,
                        "priority": {"type": "boolean"},
                    },
                ),
                "connector": {"type": "array", "items": _CONNECTOR, "minItems": 1, "maxItems": 8},
                "model": _obj(
                    ["family", "signals"],
                    {
                        "family": {"type": "string"},
                        "signals": {
                            "type": "array",
                            "items": _SIGNAL_NAME,
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                        "lags": {"type": "integer", "minimum": 0, "maximum": 16},
                        "span": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "limit": {"enum": list(LIMIT_RULES)},
                        "explained": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                        # rows of simulated normal operation to train on (one row per poll)
                        "train_rows": {"type": "integer", "minimum": 200, "maximum": 200_000},
                    },
                ),
                "proof": _obj(
                    ["window_readings", "window_ms", "statistics", "drift_test", "report_cadence"],
                    {
                        # the agent's own limits ([window] in agent/config.py)
                        "window_readings": {"type": "integer", "minimum": 1, "maximum": 65536},
                        "window_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000},
                        "statistics": {
                            "type": "array",
                            "items": {"enum": list(STATISTICS)},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                        "drift_test": {"enum": list(DRIFT_TESTS)},
                        "report_cadence": {"enum": list(CADENCES)},
                    },
                ),
                "edge": _obj(
                    ["disk_cap_mib", "shedding", "update_channel"],
                    {
                        # 1 MiB is the agent's floor; 1 TiB far above any gateway's disk
                        "disk_cap_mib": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
                        "shedding": {"enum": list(SHEDDING)},
                        "update_channel": {"enum": list(CHANNELS)},
                        "upload_batch": {"type": "integer", "minimum": 1, "maximum": 256},
                    },
                ),
                "orchestration": _obj(
                    ["jobs"],
                    {
                        "jobs": {
                            "type": "array",
                            "maxItems": 16,
                            "items": _obj(
                                ["kind", "cadence"],
                                {
                                    "kind": {"enum": list(JOB_KINDS)},
                                    "cadence": {"enum": list(CADENCES)},
                                    "min_sites": {"type": "integer", "minimum": 1},
                                    "trials": {"type": "integer", "minimum": 1, "maximum": 10000},
                                    "objective": _TEXT,
                                },
                            ),
                        }
                    },
                ),
                "deliverable": _obj(
                    ["title", "sections", "widget", "narrative"],
                    {
                        "title": _TEXT,
                        "sections": {
                            "type": "array",
                            "minItems": 1,
                            "items": _obj(
                                ["id", "title", "source"],
                                {
                                    "id": _NAME,
                                    "title": _TEXT,
                                    "source": {"enum": list(SECTION_SOURCES)},
                                },
                            ),
                        },
                        "widget": _obj(
                            ["kind", "signals"],
                            {
                                "kind": {"enum": list(WIDGETS)},
                                "signals": {
                                    "type": "array",
                                    "items": _SIGNAL_NAME,
                                    "minItems": 1,
                                },
                            },
                        ),
                        "narrative": {
                            "type": "array",
                            "minItems": 1,
                            "items": _obj(
                                ["fact", "text"],
                                {"fact": {"type": "string"}, "text": _TEXT},
                            ),
                        },
                    },
                ),
                "simulator": _obj(
                    ["kind", "seed"],
                    {
                        "kind": {"enum": list(SIMULATORS)},
                        "seed": {"type": "integer", "minimum": 0},
                        "period_s": {"type": "number", "minimum": 0.005, "maximum": 60},
                        # plant seconds per wall second in `factoryops demo` (FeedLimits: <= 1000)
                        "demo_speed": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                        "faults": {"type": "array", "items": _FAULT, "maxItems": 32},
                    },
                ),
                "feasibility": _obj(
                    ["currency", "capex", "opex_per_year", "benefits"],
                    {
                        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                        "horizon_years": {"type": "integer", "minimum": 1, "maximum": 20},
                        "discount_rate": {"type": "number", "minimum": 0, "maximum": 0.5},
                        "capex": {"type": "array", "items": {"$ref": "#/$defs/assumption"}},
                        "opex_per_year": {
                            "type": "array",
                            "items": {"$ref": "#/$defs/assumption"},
                        },
                        "benefits": {"type": "array", "items": {"$ref": "#/$defs/assumption"}},
                    },
                ),
            },
        ),
        "$defs": {
            "assumption": _obj(
                ["name", "low", "mode", "high", "basis"],
                {
                    "name": _NAME,
                    "low": {"type": "number"},
                    "mode": {"type": "number"},
                    "high": {"type": "number"},
                    # "twin:<outcome>" scales by what the twin measured; otherwise a source
                    "basis": _TEXT,
                    "per": {"type": "string"},
                    "twin": {"type": "string"},
                },
            )
        },
    }
)
