"""The connector registry is an explicit table: config imports no connector, nothing
registers itself on import, and a caller can parse with a table of its own."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from agent.config import parse_config
from agent.connectors.registry import SECTIONS
from agent.errors import ConfigError
from agent.tomlcheck import Where, get, no_unknown

MODBUS = (
    '[device]\nname = "gw"\n'
    '[[modbus]]\nname = "plc"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\naddress = 0\n'
)


def test_the_config_module_loads_without_any_connector() -> None:
    """No import cycle: agent.config stands alone; the registry pulls the connectors in."""
    code = (
        "import sys, agent.config\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent.connectors')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_connector_section_has_a_parser_and_an_adapter() -> None:
    assert sorted(SECTIONS) == ["csv", "mqtt", "opcua", "serial"]
    for parse, adapter in SECTIONS.values():
        assert callable(parse) and callable(adapter)


def test_a_caller_can_parse_with_its_own_table_of_sections() -> None:
    def parse_beacon(tables: Any, where: Where) -> tuple[str, ...]:
        out = []
        for i, t in enumerate(tables):
            w = where.child(f"[{i}]")
            no_unknown(t, w, {"name"})
            out.append(get(t, w, "name", str))
        return tuple(out)

    text = MODBUS + '[[beacon]]\nname = "b1"\n'
    cfg = parse_config(text, "gw.toml", sections={"beacon": parse_beacon})
    assert cfg.connectors == {"beacon": ("b1",)}
    with pytest.raises(ConfigError, match="unknown key"):  # the default table has no beacon
        parse_config(text, "gw.toml")
