"""The agent's health, as a technician reads it: a status document, its problems, one line.

The runtime writes the document (JSON, atomically) next to its spool every few seconds;
``factoryops agent status`` reads it from another process. Everything here but the file
reading is pure: the verdicts are functions of the document and a ``now`` passed in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.outbox import WINDOWS_GONE

__all__ = [
    "STATUS_FILE",
    "HealthLimits",
    "StatusVerdict",
    "health_line",
    "problems",
    "read_status",
    "render_status",
]

STATUS_FILE = "agent-status.json"
STATUS_VERSION = 1


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """When a running agent counts as unhealthy (each bound with its reason)."""

    # the hub unreachable this long with proofs waiting: past a few retries' backoff (cap 30 s)
    upload_stale_s: float = 300.0
    # the spool this full of its cap: shedding synced data starts at 90 % (agent/spool.py)
    spool_full_fraction: float = 0.9
    # a status file older than this many write intervals means the agent is not running
    stale_intervals: float = 3.0
    # ... but never less than this: a TPM signature or a GC pause can delay one write
    stale_min_s: float = 15.0


@dataclass(frozen=True, slots=True)
class StatusVerdict:
    """What ``agent status`` concludes: running or not, and the problems it found."""

    running: bool
    problems: tuple[str, ...]
    why_not_running: str = ""

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 running but unhealthy, 2 not running."""
        if not self.running:
            return 2
        return 1 if self.problems else 0


def _age_s(now_ns: int, then_ns: int | None) -> float | None:
    return None if then_ns is None else (now_ns - then_ns) / 1e9


# what to do about an uplink stopped with these codes, beyond the hub's answer
STOPPED_ADVICE = {
    "fork": "the spool does not continue the hub's chain (lost or replaced): stop the agent,"
    " run `factoryops agent recover --config <agent.toml>`, start it",
    WINDOWS_GONE: "the hub lost windows this spool no longer holds (ADR 0048): restore the"
    " hub's newest backup, or accept the loss (docs/agent.md, the storage policy)",
}


def problems(doc: dict[str, Any], now_ns: int, limits: HealthLimits) -> list[str]:
    """Every reason the agent described by ``doc`` is not healthy (empty: healthy)."""
    out: list[str] = []
    for c in doc.get("connectors", []):
        if c.get("failure"):
            out.append(f"connector {c['name']}: {c['failure']}")
        elif c.get("peer_up") is False:
            out.append(f"connector {c['name']}: its peer does not answer")
    up = doc.get("uplink")
    if up is not None:
        if up.get("stopped"):
            advice = STOPPED_ADVICE.get(str(up.get("stopped_code")))
            out.append(f"uplink stopped: {up['stopped']}" + (f": {advice}" if advice else ""))
        elif doc.get("spool", {}).get("backlog_windows", 0) > 0 and up.get("last_error_ns"):
            since = _age_s(now_ns, up.get("last_sync_ns") or doc.get("started_ns"))
            if since is not None and since > limits.upload_stale_s:
                out.append(
                    f"uplink: nothing acknowledged for {since:,.0f} s "
                    f"(last error: {up.get('last_error')})"
                )
    spool = doc.get("spool", {})
    cap = spool.get("disk_cap_bytes") or 0
    if cap and spool.get("bytes", 0) > limits.spool_full_fraction * cap:
        out.append(f"spool holds {spool['bytes']:,} bytes, over 90 % of its cap {cap:,}")
    model = doc.get("model")
    if model is not None and model.get("error"):
        out.append(f"model: {model['error']}")
    return out


def health_line(doc: dict[str, Any], now_ns: int, limits: HealthLimits) -> str:
    """One INFO line: what flows, what waits, what is wrong."""
    spool, up = doc.get("spool", {}), doc.get("uplink")
    conns = doc.get("connectors", [])
    peers_up = sum(1 for c in conns if c.get("peer_up") is not False and not c.get("failure"))
    parts = [
        f"health: {doc.get('readings_committed', 0):,} readings committed",
        f"{doc.get('windows_signed', 0):,} windows signed",
        f"connectors {peers_up}/{len(conns)} up",
        f"spool backlog {spool.get('backlog_windows', 0):,} windows",
    ]
    if up is not None:
        parts.append(f"synced {up.get('synced_windows', 0):,}, upload failures {up['failures']}")
    found = problems(doc, now_ns, limits)
    parts.append("OK" if not found else "PROBLEMS: " + "; ".join(found))
    return ", ".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (systemd DynamicUser): it exists
        return True
    return True


def read_status(
    path: Path, now_ns: int, limits: HealthLimits
) -> tuple[dict[str, Any] | None, StatusVerdict]:
    """The status document at ``path`` and the verdict on it (I/O: the file, the pid)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, StatusVerdict(False, (), f"no status file at {path}")
    except (OSError, ValueError) as err:
        return None, StatusVerdict(False, (), f"cannot read the status file {path}: {err}")
    if not isinstance(doc, dict) or doc.get("version") != STATUS_VERSION:
        return None, StatusVerdict(False, (), f"{path} is not an agent status file")
    age = _age_s(now_ns, int(doc["written_ns"])) or 0.0
    stale_after = max(limits.stale_min_s, limits.stale_intervals * doc["status_interval_s"])
    if doc.get("stopped_ns"):
        return doc, StatusVerdict(False, (), "the agent stopped cleanly")
    if not _pid_alive(int(doc["pid"])):
        return doc, StatusVerdict(False, (), f"its process {doc['pid']} is gone (crashed?)")
    if age > stale_after:
        why = f"the status was last written {age:,.0f} s ago (every {doc['status_interval_s']} s)"
        return doc, StatusVerdict(False, (), why + ": the agent is hung or stopped")
    return doc, StatusVerdict(True, tuple(problems(doc, now_ns, limits)))


def _ago(now_ns: int, then_ns: int | None) -> str:
    age = _age_s(now_ns, then_ns)
    return "never" if age is None else f"{age:,.1f} s ago"


def _update_lines(up: dict[str, Any] | None, now_ns: int) -> list[str]:
    """The update task's lines: versions running and available, when it checks next."""
    if up is None:
        return ["updates    none ([updates] unset, or no check yet)"]
    nxt = _age_s(up["next_check_ns"], now_ns)  # seconds until, as an age the other way
    failing = f", {up['failures']} failed checks in a row" if up.get("failures") else ""
    lines = [
        f"updates    {up['channel']}: running v{up['running']}, available v{up['available']}; "
        f"{up['checks']:,} checks{failing}, next in {max(0.0, nxt or 0.0):,.0f} s"
    ]
    lines += [f"           last: {what}" for what in up.get("last", [])]
    cfg = up.get("config")
    if cfg is not None:
        applied = ", ".join(f"{k} v{v}" for k, v in sorted(cfg["applied"].items())) or "none"
        trial = cfg.get("trial")
        lines.append(
            f"config     fragments of {cfg['site']}: {applied}"
            + (f"; {trial['name']} v{trial['version']} ON PROBATION" if trial else "")
        )
    return lines


def render_status(doc: dict[str, Any], verdict: StatusVerdict, now_ns: int) -> list[str]:
    """The human form of ``agent status``: one fact a line."""
    dev, spool, up, model = doc["device"], doc["spool"], doc.get("uplink"), doc.get("model")
    state = "running" if verdict.running else f"NOT RUNNING ({verdict.why_not_running})"
    lines = [
        f"agent      {dev['name']}  {state}, pid {doc['pid']}, up since "
        f"{_ago(now_ns, doc['started_ns'])}, status written {_ago(now_ns, doc['written_ns'])}",
        f"identity   {dev['utid']}  signer {dev['signer']}"
        + (f" ({dev['tcti']})" if dev.get("tcti") else ""),
    ]
    for c in doc["connectors"]:
        peer = {True: "answering", False: "NOT ANSWERING", None: "-"}[c.get("peer_up")]
        lines.append(
            f"connector  {c['name']:<24} peer {peer:<13} last reading "
            f"{_ago(now_ns, c.get('last_reading_ns')):<14} readings {c['readings']:,}"
            + (f"  errors {c['errors']:,}" if c.get("errors") else "")
            + (f"  FAILED: {c['failure']}" if c.get("failure") else "")
        )
    lines.append(
        f"spool      {spool['path']}  {spool['bytes']:,} bytes of {spool['disk_cap_bytes']:,}, "
        f"backlog {spool['backlog_windows']:,} windows, disk free {spool['disk_free_bytes']:,}"
    )
    lines.append(
        f"windows    {doc['windows_signed']:,} signed, {doc['readings_committed']:,} readings, "
        f"{doc['gap_records']:,} gap records, last signature {doc['last_sign_s'] * 1000:,.1f} ms"
    )
    if up is None:
        lines.append("uplink     none ([hub] url unset: an offline gateway)")
    else:
        last = f"last acknowledged {_ago(now_ns, up.get('last_sync_ns'))}"
        answer = f", last error: {up['last_error']}" if up.get("last_error") else ""
        lines.append(
            f"uplink     {up['url']}  {up['synced_windows']:,} proofs synced, {last}, "
            f"{up['failures']:,} failures{answer}"
        )
        if up.get("stopped"):
            lines.append(f"           STOPPED: {up['stopped']}")
    if model is None:
        lines.append("model      none")
    else:
        fleet = f", fleet v{model['fleet_version']}" if model.get("fleet_version") else ""
        lines.append(
            f"model      {model['id']} v{model.get('version', '?')}{fleet} sha256 "
            f"{model['sha256'][:16]}…  (updates: `factoryops agent update status`)"
            + (f"  REFUSED UPDATE: {model['error']}" if model.get("error") else "")
        )
    lines += _update_lines(doc.get("updates"), now_ns)
    if verdict.problems:
        lines += [f"PROBLEM    {p}" for p in verdict.problems]
    elif verdict.running:
        lines.append("health     OK")
    return lines
