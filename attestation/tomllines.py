"""Where each key of a TOML text is: tomllib keeps no line numbers, and every config error
names its file line (agent configs, HIL rig files). A leaf helper: imports nothing of ours.
"""

from __future__ import annotations

import re

__all__ = ["key_lines"]

_ARRAY_HEADER = re.compile(r"\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"\[\s*([^\]]+?)\s*\]")
_KEY_LINE = re.compile(r"""([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*=""")


def key_lines(text: str) -> dict[str, int]:
    """Map every table and key of a TOML text to its first line (tomllib keeps no lines).

    Arrays of tables get their index, as the parser's errors name them: the second
    ``[[modbus]]`` is ``modbus[1]``, its first ``[[modbus.tags]]`` ``modbus[1].tags[0]``.
    """
    out: dict[str, int] = {}
    counts: dict[str, int] = {}

    def resolve(parts: list[str]) -> str:
        cur = ""
        for part in parts:
            cand = f"{cur}.{part}" if cur else part
            cur = f"{cand}[{counts[cand] - 1}]" if cand in counts else cand
        return cur

    table = ""
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if m := _ARRAY_HEADER.match(s):
            parts = [p.strip().strip("\"'") for p in m.group(1).split(".")]
            base = resolve(parts[:-1])
            base = f"{base}.{parts[-1]}" if base else parts[-1]
            counts[base] = counts.get(base, 0) + 1
            table = f"{base}[{counts[base] - 1}]"
            out.setdefault(base, n)  # the array as a whole: its first table
        elif m := _TABLE_HEADER.match(s):
            table = resolve([p.strip().strip("\"'") for p in m.group(1).split(".")])
        elif m := _KEY_LINE.match(s):
            key = m.group(1).strip("\"'")
            out.setdefault(f"{table}.{key}" if table else key, n)
            continue
        else:
            continue
        out.setdefault(table, n)
    return out
