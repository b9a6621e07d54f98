"""Which connectors a config asks for: one table from config section to its parser and its
adapter, built here explicitly (nothing registers itself on import).

Modbus is parsed by ``agent.config`` itself (``[[modbus]]``); ``agent.config.parse_config``
calls the parsers of ``SECTIONS`` for every other section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.config import AgentConfig, SectionParser
from agent.connectors.base import Connector
from agent.connectors.csvdrop import CsvDropConnector, parse_csv_section
from agent.connectors.modbus import ModbusConnector
from agent.connectors.mqtt import MqttConnector, parse_mqtt_section
from agent.connectors.opcua import OpcUaConnector, last_seen_path, parse_opcua_section
from agent.connectors.serial_lines import SerialConnector, parse_serial_section

__all__ = ["SECTIONS", "Adapter", "build_connectors"]

# (one parsed table of a section, the whole config) -> the connector it becomes
Adapter = Callable[[Any, AgentConfig], Connector]

# section -> (parser of its tables, adapter); in the order the connectors are started, after
# the Modbus devices
SECTIONS: Mapping[str, tuple[SectionParser, Adapter]] = {
    "mqtt": (parse_mqtt_section, lambda c, _: MqttConnector(c)),
    "opcua": (
        parse_opcua_section,
        lambda c, cfg: OpcUaConnector(c, state_path=last_seen_path(cfg.spool.path, c.name)),
    ),
    "csv": (parse_csv_section, lambda c, _: CsvDropConnector(c)),
    "serial": (parse_serial_section, lambda c, _: SerialConnector(c)),
}


def build_connectors(config: AgentConfig) -> list[Connector]:
    """Every connector the config names, Modbus devices first."""
    out: list[Connector] = [ModbusConnector(d) for d in config.modbus]
    for name, (_, adapter) in SECTIONS.items():
        out += [adapter(c, config) for c in config.connectors.get(name, ())]
    return out
