"""A wrong config names the key, the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.config import parse_config
from agent.errors import ConfigError
from factoryops.cli import cli

GOOD = """
[device]
name = "gw-1"

[hub]
url = "http://127.0.0.1:8080"

[[modbus]]
name = "plc"
host = "127.0.0.1"
port = 5020

[[modbus.tags]]
name = "Pressure"
address = 0
type = "float32"
unit = "bar"
"""


def test_a_good_config_parses() -> None:
    cfg = parse_config(GOOD, "agent.toml", base_dir=Path("/tmp"))
    assert cfg.modbus[0].tags[0].name == "Pressure"
    assert cfg.hub.url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ("port = 5020", "port = 70000", "modbus[0].port", 11),
        ('type = "float32"', 'type = "float128"', "modbus[0].tags[0].type", 16),
        ('url = "http://127.0.0.1:8080"', 'url = "ftp://x"', "hub.url", 6),
        ('name = "gw-1"', 'nmae = "gw-1"', "device.nmae", 3),
        ("address = 0", 'address = "zero"', "modbus[0].tags[0].address", 15),
    ],
)
def test_errors_name_the_key_the_file_and_the_line(old: str, new: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace(old, new), "/etc/agent.toml", base_dir=Path("/tmp"))
    assert err.value.key == key
    assert err.value.line == line
    assert str(err.value).startswith(f"/etc/agent.toml:{line}: {key}:")


def test_check_config_exits_1_with_the_message(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text(GOOD.replace("port = 5020", "port = -1"))
    result = CliRunner().invoke(cli, ["agent", "check-config", str(bad)])
    assert result.exit_code != 0
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    result = CliRunner().invoke(cli, ["agent", "check-config", str(good)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_an_unparseable_file_names_the_toml_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("[device]\nname = \n", "x.toml")
    assert err.value.line == 2
