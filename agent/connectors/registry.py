"""Which connectors a config asks for: one place that maps config sections to adapters.

Modbus is parsed by ``agent.config`` itself; every other connector module registers its
section parser in ``agent.config.CONNECTOR_PARSERS`` when imported, and a builder here.
"""

from __future__ import annotations

from agent.config import AgentConfig
from agent.connectors.base import Connector
from agent.connectors.csvdrop import CsvDropConnector
from agent.connectors.modbus import ModbusConnector
from agent.connectors.mqtt import MqttConnector
from agent.connectors.opcua import OpcUaConnector
from agent.connectors.serial_lines import SerialConnector

__all__ = ["build_connectors"]


def build_connectors(config: AgentConfig) -> list[Connector]:
    """Every connector the config names, Modbus devices first."""
    out: list[Connector] = [ModbusConnector(d) for d in config.modbus]
    out += [MqttConnector(c) for c in config.connectors.get("mqtt", ())]
    out += [OpcUaConnector(c) for c in config.connectors.get("opcua", ())]
    out += [CsvDropConnector(c) for c in config.connectors.get("csv", ())]
    out += [SerialConnector(c) for c in config.connectors.get("serial", ())]
    return out
