"""Reading validated values out of parsed TOML, each error naming the key, file and line.

Used by the agent's config and by every connector's own section parser (code review, change
3: the connectors imported these as private helpers of ``agent/config.py``). ``TableKeys``
derives the keys a table accepts from the dataclass it fills (code review D16).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ConfigError
from attestation.tomllines import key_lines

__all__ = ["TableKeys", "Where", "choice", "get", "get_int", "no_unknown"]


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
        lines = key_lines(self.text)
        while key:
            if key in lines:
                return lines[key]
            key = key.rsplit(".", 1)[0] if "." in key else ""
        return None

    def error(self, key: str, message: str) -> ConfigError:
        full = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(self.path, full, self.line_of(full), message)


def get(t: dict[str, Any], w: Where, key: str, kind: type, default: Any = ...) -> Any:
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


def get_int(t: dict[str, Any], w: Where, key: str, lo: int, hi: int, default: Any = ...) -> int:
    v: int = get(t, w, key, int, default)
    if not lo <= v <= hi:
        raise w.error(key, f"{v} outside {lo}..{hi}")
    return v


def choice(
    t: dict[str, Any], w: Where, key: str, choices: tuple[str, ...], default: Any = ...
) -> str:
    v: str = get(t, w, key, str, default)
    if v not in choices:
        raise w.error(key, f"{v!r} is not one of {', '.join(choices)}")
    return v


def no_unknown(t: dict[str, Any], w: Where, known: Collection[str]) -> None:
    for key in t:
        if key not in known:
            raise w.error(key, f"unknown key (known: {', '.join(sorted(known))})")


@dataclass(frozen=True, slots=True)
class TableKeys:
    """The keys one TOML table accepts, derived from the config dataclass it fills.

    Every field of ``of`` is a key of the same name, so adding a field is all it takes for its
    key to be accepted, and a key with no field is refused. Where the file and the dataclass
    differ, the difference is written here, never in a hand-kept list of keys:

    - ``keys``: field -> the keys that set it, when not its own name (``password`` is set by
      ``password_file`` or ``password_env``; ``host`` and ``port`` come from ``url``)
    - ``inline``: field -> the ``TableKeys`` of a dataclass whose keys sit in this same table
      (a signal's ``scaling``: ``unit``, ``scale``, ``offset``)
    - ``unset``: field -> why no key of this table sets it (another table fills it, or the
      program does)
    - ``extra``: key -> why it is accepted with no field of its own (an alias, a key refused
      later with a message of its own, a key of old files read and ignored)
    - ``fields``: the fields of ``of`` that live in this table, when not all of them
      (``[metrics]`` fills two fields of ``AgentConfig``)

    ``tests/unit/test_agent_config_keys.py`` checks that every field is accounted for and every
    name in these mappings is a field, so the table and the dataclass cannot drift apart.
    """

    of: type
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    inline: Mapping[str, TableKeys] = field(default_factory=dict)
    unset: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)
    fields: tuple[str, ...] | None = None

    def field_names(self) -> tuple[str, ...]:
        """The fields of ``of`` this table fills, in their declared order."""
        names = tuple(f.name for f in dataclasses.fields(self.of))
        return names if self.fields is None else tuple(n for n in names if n in self.fields)

    def accepted(self) -> frozenset[str]:
        """Every key this table takes."""
        out = set(self.extra)
        for name in self.field_names():
            if name in self.unset:
                continue
            if name in self.inline:
                out |= self.inline[name].accepted()
            out |= set(self.keys.get(name, (name,) if name not in self.inline else ()))
        return frozenset(out)

    def check(self, t: dict[str, Any], w: Where, *more: str) -> None:
        """Refuse the first key of ``t`` this table does not take (``more``: keys known only
        at run time, such as the connector sections of the config's top level)."""
        no_unknown(t, w, self.accepted() | set(more))
