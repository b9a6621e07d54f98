"""The keys a config table accepts come from the dataclass it fills (code review D16): every
field is a key or is mapped with a reason, every key is a field or a documented alias, every
table refuses a key with no field by its path, and every key it takes is read."""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

import pytest

import agent.config
from agent.config import parse_config
from agent.connectors.registry import SECTIONS
from agent.errors import ConfigError
from agent.tomlcheck import TableKeys, Where


def _modules() -> list[ModuleType]:
    """agent.config and the module of every connector section's parser."""
    return [agent.config, *(sys.modules[parse.__module__] for parse, _ in SECTIONS.values())]


def _tables() -> dict[str, TableKeys]:
    out: dict[str, TableKeys] = {}
    for module in _modules():
        out |= module.TABLES
    return out


def _with_inline(keys: TableKeys) -> Iterator[TableKeys]:
    yield keys
    for inner in keys.inline.values():
        yield from _with_inline(inner)


def _every_table_keys() -> list[object]:
    return [
        pytest.param(path, k, id=f"{path or '<top>'}:{k.of.__name__}")
        for path, top in _tables().items()
        for k in _with_inline(top)
    ]


def _dataclasses_in(hint: object) -> set[type]:
    """The dataclasses a field's type names: itself, or inside ``X | None``, ``tuple[X, ...]``."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return {hint}
    return set().union(*(_dataclasses_in(arg) for arg in typing.get_args(hint)))


def test_every_connector_section_has_its_tables_beside_its_parser() -> None:
    tables = _tables()
    for section in SECTIONS:
        assert f"{section}[]" in tables and f"{section}[].signals[]" in tables, section


@pytest.mark.parametrize(("path", "keys"), _every_table_keys())
def test_every_field_is_a_key_and_every_key_a_field_or_a_documented_alias(
    path: str, keys: TableKeys
) -> None:
    every_field = {f.name for f in dataclasses.fields(keys.of)}
    assert set(keys.fields or ()) <= every_field, "fields names a field the dataclass lacks"
    names = set(keys.field_names())
    mapped = set(keys.keys) | set(keys.inline) | set(keys.unset)
    assert mapped <= names, f"stale mapping, no such field: {sorted(mapped - names)}"
    assert not set(keys.unset) & (set(keys.keys) | set(keys.inline))
    assert all(reason.strip() for reason in (*keys.unset.values(), *keys.extra.values()))
    assert not set(keys.extra) & names, "a key of a field's own name is that field's key"
    accepted = keys.accepted()
    # every field is an accepted key, unless the mapping says which keys set it or why none
    for name in names - mapped:
        assert name in accepted, name
    for name, via in keys.keys.items():
        assert via and set(via) <= accepted, name
    # every accepted key is a field, a key a field maps to, or a documented extra
    inline = set().union(*(k.accepted() for k in keys.inline.values()))
    aliases = set().union(*keys.keys.values())
    for key in accepted:
        assert key in (names - mapped) | aliases | inline | set(keys.extra), key
    # an inline table is the dataclass of the field it fills
    hints = typing.get_type_hints(keys.of)
    for name, inner in keys.inline.items():
        assert _dataclasses_in(hints[name]) == {inner.of}, name


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_every_config_dataclass_a_table_holds_has_keys_of_its_own(module: ModuleType) -> None:
    """A new nested config dataclass cannot be added without saying which keys fill it."""
    covered = {k.of for top in module.TABLES.values() for k in _with_inline(top)}
    for keys in (k for top in module.TABLES.values() for k in _with_inline(top)):
        hints = typing.get_type_hints(keys.of)
        for name in set(keys.field_names()) - set(keys.keys) - set(keys.unset):
            missing = _dataclasses_in(hints[name]) - covered
            assert not missing, f"{keys.of.__name__}.{name}: {missing} has no TableKeys"


def test_a_new_field_is_all_it_takes_for_its_key_to_be_accepted() -> None:
    @dataclasses.dataclass(frozen=True)
    class Before:
        a: int = 0

    @dataclasses.dataclass(frozen=True)
    class After(Before):
        b: int = 0

    w = Where("x.toml", "[t]\nb = 1\n", "t")
    TableKeys(After).check({"a": 1, "b": 1}, w)
    with pytest.raises(ConfigError, match=r"x.toml:2: t.b: unknown key \(known: a\)"):
        TableKeys(Before).check({"a": 1, "b": 1}, w)


# One valid config with every table, as (header, {key: TOML value}); "" holds top-level keys.
BLOCKS: list[tuple[str, dict[str, str]]] = [
    ("", {}),
    ("[device]", {"name": '"gw"'}),
    ("[hub]", {"url": '"http://127.0.0.1:1"'}),
    ("[window]", {}),
    ("[spool]", {}),
    ("[metrics]", {}),
    ("[model]", {"manifest": '"model.json"'}),
    ("[log]", {}),
    ("[updates]", {}),
    ("[[modbus]]", {"name": '"plc"', "host": '"127.0.0.1"'}),
    ("[[modbus.signals]]", {"name": '"p"', "address": "0"}),
    ("[[mqtt]]", {"name": '"m"', "url": '"mqtt://127.0.0.1"'}),
    ("[[mqtt.signals]]", {"name": '"m1"', "topic": '"a/b"', "pointer": '"/v"'}),
    ("[[opcua]]", {"name": '"o"', "url": '"opc.tcp://127.0.0.1:4840"'}),
    ("[[opcua.signals]]", {"name": '"o1"', "node": '"ns=2;s=P"'}),
    ("[[csv]]", {"name": '"c"', "folder": '"."', "timestamp_column": '"t"'}),
    ("[[csv.signals]]", {"name": '"c1"', "column": '"v"'}),
    ("[[serial]]", {"name": '"s"', "port": '"/dev/null"', "regex": "'(?P<v>.*)'"}),
    ("[[serial.signals]]", {"name": '"s1"', "group": '"v"'}),
]
NO_VALUE_TAKES = "1979-05-27T07:32:00Z"  # a TOML datetime: no key of the agent takes one
# keys the parser reads only when another key asks for them (then each is read and checked)
READ_ONLY_WHEN: Mapping[str, set[str]] = {
    "opcua[]": {"certificate", "private_key", "server_certificate", "application_uri"},
}


def _header(path: str) -> str:
    if not path:
        return ""
    bare = path.replace("[]", "")
    return f"[[{bare}]]" if path.endswith("[]") else f"[{bare}]"


def _text(header: str | None = None, key: str = "", value: str = "") -> str:
    """The config of ``BLOCKS``, with ``key = value`` added to the table of ``header``."""
    lines = []
    for head, body in BLOCKS:
        lines += [head] if head else []
        lines += [f"{k} = {v}" for k, v in body.items()]
        lines += [f"{key} = {value}"] if head == header else []
    return "\n".join(lines) + "\n"


def _parse(tmp_path: Path, text: str) -> None:
    parse_config(text, str(tmp_path / "agent.toml"))


def test_the_config_with_every_table_is_valid(tmp_path: Path) -> None:
    _parse(tmp_path, _text())
    assert {_header(path) for path in _tables()} == {head for head, _ in BLOCKS}


@pytest.mark.parametrize("path", sorted(_tables()))
def test_every_table_refuses_a_key_with_no_field_naming_its_path(tmp_path: Path, path: str) -> None:
    with pytest.raises(ConfigError, match="unknown key") as err:
        _parse(tmp_path, _text(_header(path), "no_such_key", "1"))
    prefix = path.replace("[]", "[0]")
    assert err.value.key == (f"{prefix}.no_such_key" if prefix else "no_such_key")


def _unread_keys() -> list[tuple[str, str]]:
    """(table, key) of every key the table takes that ``BLOCKS`` does not already set."""
    tables, present = _tables(), dict(BLOCKS)
    out = []
    for path, keys in sorted(tables.items()):
        if not path:
            continue  # the top level's keys are the tables themselves
        given = {
            *present[_header(path)],
            *(p[len(path) + 1 : -2] for p in tables if p.startswith(f"{path}.")),
        }
        out += [
            (path, key)
            for key in sorted(keys.accepted() - given)
            if key not in READ_ONLY_WHEN.get(path, set())
        ]
    return out


@pytest.mark.parametrize(("path", "key"), _unread_keys())
def test_every_key_a_table_takes_is_read_by_its_parser(tmp_path: Path, path: str, key: str) -> None:
    """A key accepted and never read would be silently ignored: a value of the wrong type
    (or a key its section does not use) is refused, by name."""
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, _text(_header(path), key, NO_VALUE_TAKES))
    assert err.value.key == f"{path.replace('[]', '[0]')}.{key}", str(err.value)


def test_an_opcua_timeout_is_a_key_now_that_it_is_a_field(tmp_path: Path) -> None:
    """OpcUaConfig.timeout_s had no key: the field existed and a file could not set it."""
    cfg = parse_config(_text("[[opcua]]", "timeout_s", "30"), str(tmp_path / "agent.toml"))
    assert cfg.connectors["opcua"][0].timeout_s == 30.0
    with pytest.raises(ConfigError, match=r"opcua\[0\]\.timeout_s: 0.0 outside 0.1..600.0 s"):
        _parse(tmp_path, _text("[[opcua]]", "timeout_s", "0.0"))
