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
        # accepted and silently ignored once; the agent never acts as the hub's admin
        (
            'url = "http://127.0.0.1:8080"',
            'url = "http://h"\nadmin_token = "x"',
            "hub.admin_token",
            7,
        ),
        ("[hub]", '[log]\nlevel = "LOUD"\n[hub]', "log.level", 6),
        ("[hub]", '[log]\nformat = "xml"\n[hub]', "log.format", 6),
    ],
)
def test_errors_name_the_key_the_file_and_the_line(old: str, new: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace(old, new), "/etc/agent.toml", base_dir=Path("/tmp"))
    assert err.value.key == key
    assert err.value.line == line
    assert str(err.value).startswith(f"/etc/agent.toml:{line}: {key}:")


def test_the_log_section_sets_level_format_and_intervals() -> None:
    text = GOOD.replace(
        "[hub]", '[log]\nlevel = "DEBUG"\nformat = "json"\nhealth_interval_s = 30\n[hub]'
    )
    log = parse_config(text, "agent.toml", base_dir=Path("/tmp")).log
    assert (log.level, log.format, log.health_interval_s, log.status_interval_s) == (
        "DEBUG", "json", 30, 5,
    )  # fmt: skip


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


SECOND_DEVICE = """
[[modbus]]
name = "plc-2"
host = "127.0.0.1"
port = 5021

[[modbus.tags]]
name = "Pressure"
address = 4
"""


def test_one_signal_name_on_two_devices_is_refused_naming_both_places() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD + SECOND_DEVICE, "/etc/agent.toml", base_dir=Path("/tmp"))
    assert err.value.key == "modbus[1].tags[0].name"
    assert err.value.line == 25
    assert "is also modbus[0].tags[0].name (line 14)" in str(err.value)


def test_a_signal_name_shared_across_connectors_is_refused() -> None:
    opcua = """
[[opcua]]
name = "press"
url = "opc.tcp://127.0.0.1:4840/"
[[opcua.signals]]
name = "Pressure"
node = "ns=2;s=P"
"""
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD + opcua, "/etc/agent.toml", base_dir=Path("/tmp"))
    assert err.value.key == "opcua[0].signals[0].name"
    assert "modbus[0].tags[0].name (line 14)" in str(err.value)


def test_what_the_hub_would_refuse_in_a_leaf_is_refused_by_check_config() -> None:
    long_name = GOOD.replace('name = "Pressure"', f'name = "{"p" * 129}"')
    with pytest.raises(ConfigError) as err:
        parse_config(long_name, "/etc/agent.toml", base_dir=Path("/tmp"))
    assert err.value.key == "modbus[0].tags[0].name" and "1..128" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD + "[window]\nmax_readings = 70000\n", "a.toml", base_dir=Path("/tmp"))
    assert err.value.key == "window.max_readings" and "1..65536" in str(err.value)


def test_a_twenty_by_hundred_tag_gateway_passes_check_config() -> None:
    devices = "".join(
        f'[[modbus]]\nname = "dev{d}"\nhost = "127.0.0.1"\nport = 5020\n'
        + "".join(f'[[modbus.tags]]\nname = "dev{d}.t{t}"\naddress = {2 * t}\n' for t in range(100))
        for d in range(20)
    )
    cfg = parse_config('[device]\nname = "gw"\n' + devices, "a.toml", base_dir=Path("/tmp"))
    assert sum(len(d.tags) for d in cfg.modbus) == 2000


def test_the_shipped_gateway_config_writes_only_where_the_systemd_unit_allows() -> None:
    """deploy/agent.toml is what docs/deploy.md tells a technician to install; under the
    unit's ProtectSystem=strict only /var/lib/<StateDirectory> is writable."""
    root = Path(__file__).resolve().parents[2] / "deploy"
    unit = (root / "factoryops-agent.service").read_text()
    state = "/var/lib/" + unit.split("StateDirectory=", 1)[1].split()[0]
    assert "--config /etc/factoryops/agent.toml" in unit and "ProtectSystem=strict" in unit
    text = (root / "agent.toml").read_text()
    cfg = parse_config(text, "/etc/factoryops/agent.toml", base_dir=Path("/etc/factoryops"))
    written = [cfg.spool.path, cfg.hub.log_key]
    assert all(str(p).startswith(state + "/") for p in written), written


def test_a_modicon_register_number_is_refused_with_its_zero_based_address() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace("address = 0", "address = 40001"), "a.toml", base_dir=Path())
    assert err.value.key == "modbus[0].tags[0].address"
    assert err.value.line == 15
    assert "Modicon" in str(err.value) and "address = 0 in table 'holding'" in str(err.value)
    # an input register in the 3xxxx range, and a holding address that is not Modicon-shaped
    bad = GOOD.replace("address = 0", 'address = 30011\ntable = "input"')
    with pytest.raises(ConfigError, match="address = 10 in table 'input'"):
        parse_config(bad, "a.toml", base_dir=Path())
    ok = parse_config(GOOD.replace("address = 0", "address = 30011"), "a.toml", base_dir=Path())
    assert ok.modbus[0].tags[0].address == 30011


@pytest.mark.parametrize(
    ("notation", "word_order", "byte_order"),
    [
        ("ABCD", "big", "big"),
        ("CDAB", "little", "big"),
        ("BADC", "big", "little"),
        ("DCBA", "little", "little"),
    ],
)
def test_byte_order_takes_the_abcd_notation(
    notation: str, word_order: str, byte_order: str
) -> None:
    text = GOOD.replace('type = "float32"', f'type = "float32"\nbyte_order = "{notation}"')
    tag = parse_config(text, "a.toml", base_dir=Path()).modbus[0].tags[0]
    assert (tag.word_order, tag.byte_order) == (word_order, byte_order)


def test_abcd_notation_and_a_separate_word_order_contradict_each_other() -> None:
    text = GOOD.replace(
        'type = "float32"', 'type = "float32"\nbyte_order = "CDAB"\nword_order = "big"'
    )
    with pytest.raises(ConfigError, match="already says the word order"):
        parse_config(text, "a.toml", base_dir=Path())


def test_modbus_takes_signals_like_every_connector_and_tags_as_its_alias() -> None:
    cfg = parse_config(
        GOOD.replace("[[modbus.tags]]", "[[modbus.signals]]"), "a.toml", base_dir=Path()
    )
    assert cfg.modbus[0].tags[0].name == "Pressure"
    both = GOOD + '\n[[modbus.signals]]\nname = "Flow"\naddress = 2\n'
    with pytest.raises(ConfigError, match="not both"):
        parse_config(both, "a.toml", base_dir=Path())
