"""HIL rig files (TOML) and their verdicts: what to run, what to break, what must hold.

Pure: parsing turns a file into a ``Rig``; ``evaluate`` turns a rig's observations into one
verdict per expectation. The runner that does the I/O lives in ``hil_tests.rig_runner``.

A rig file (times are plant seconds since the start)::

    [plant]                     # all keys optional
    seed = 7
    speed = 10.0                # plant seconds per wall second
    period_s = 0.1
    duration_s = 60.0
    faults = "none"             # base schedule: "none" | "default"; [[fault]] adds to it
    replay = "valve1/0.csv"     # serve a SKAB file instead of the model (relative to the rig)

    [probe]
    poll_ms = 100               # wall-clock interval of the rig's own Modbus reads
    timeout_ms = 500

    [[fault]]                   # plant or sensor fault, as hil_tests.plant.Fault
    start_s = 5
    duration_s = 20
    kind = "cavitation"
    severity = 0.9
    signal = "Pressure"         # sensor faults only

    [[transport]]               # Modbus transport fault: drop | delay | exception
    start_s = 30
    duration_s = 5
    kind = "exception"
    code = 4                    # exception: Modbus exception code; delay: delay_ms = 800

    [[expect]]                  # reads_ok | reads_fail | exception | rises | falls
    kind = "rises"
    signal = "Accelerometer1RMS"
    baseline = [0, 4]
    window = [12, 24]
    by = 0.05
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.tomllines import key_lines
from hil_tests.errors import RigError
from hil_tests.plant import DEFAULT_FAULTS, SIGNALS, Fault, FaultKind

__all__ = [
    "EXPECTATION_KINDS",
    "TRANSPORT_KINDS",
    "Expectation",
    "Observation",
    "PlantSection",
    "ProbeSection",
    "Rig",
    "RigLimits",
    "TransportFault",
    "Verdict",
    "evaluate",
    "load_faults",
    "load_rig",
    "parse_faults",
]

TRANSPORT_KINDS = ("drop", "delay", "exception")
EXPECTATION_KINDS = ("reads_ok", "reads_fail", "exception", "rises", "falls")
_MODBUS_EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 8, 10, 11)  # Modbus spec 1.1b3 §7


@dataclass(frozen=True, slots=True)
class RigLimits:
    """Bounds on a rig file: a rig is a test, not an endurance run."""

    max_duration_s: float = 86_400.0  # one plant day
    max_entries: int = 1000  # per array: faults, transport faults, expectations
    max_delay_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class PlantSection:
    seed: int = 0
    speed: float = 1.0
    period_s: float = 0.1
    duration_s: float = 60.0
    replay: Path | None = None


@dataclass(frozen=True, slots=True)
class ProbeSection:
    poll_ms: int = 100
    timeout_ms: int = 500


@dataclass(frozen=True, slots=True)
class TransportFault:
    start_s: float
    duration_s: float
    kind: str  # one of TRANSPORT_KINDS
    delay_ms: int = 0
    code: int = 0


@dataclass(frozen=True, slots=True)
class Expectation:
    kind: str  # one of EXPECTATION_KINDS
    window: tuple[float, float]
    name: str
    min_fraction: float = 0.9  # reads_ok / reads_fail
    code: int = 0  # exception
    signal: str = ""  # rises / falls
    baseline: tuple[float, float] = (0.0, 0.0)
    by: float = 0.0


@dataclass(frozen=True, slots=True)
class Rig:
    path: Path
    plant: PlantSection
    probe: ProbeSection
    faults: tuple[Fault, ...]
    transport: tuple[TransportFault, ...]
    expectations: tuple[Expectation, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe read: plant time, whether it returned data, the exception code, values."""

    t_s: float
    ok: bool
    exception_code: int | None = None
    values: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    passed: bool
    detail: str


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """A key of a rig file, with the file's key -> line map so every error names its line."""

    path: Path
    key: str
    lines: Mapping[str, int] = field(default_factory=dict)

    def line(self) -> int | None:
        key = self.key
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rsplit(".", 1)[0] if "." in key else ""
        return None

    def error(self, message: str) -> RigError:
        line = self.line()
        where = f"{self.path}:{line}" if line else str(self.path)
        return RigError(
            f"{where}: {self.key}: {message}",
            hint="see the rig file format in docs/plant.md (HIL rigs)",
        )

    def child(self, key: str) -> _Where:
        return _Where(self.path, f"{self.key}.{key}" if self.key else key, self.lines)

    def at(self, key: str) -> _Where:
        """A top-level key of the same file (``transport[2]``)."""
        return _Where(self.path, key, self.lines)


def _get(t: Mapping[str, Any], w: _Where, key: str, kind: type, default: Any = ...) -> Any:
    if key not in t:
        if default is ...:
            raise w.child(key).error("is required")
        return default
    v = t[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool) != (kind is bool):
        raise w.child(key).error(f"expected {kind.__name__}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise w.child(key).error(f"expected a finite number, got {v!r}")
    return v


def _no_unknown(t: Mapping[str, Any], w: _Where, known: set[str]) -> None:
    extra = sorted(set(t) - known)
    if extra:
        raise w.error(f"unknown keys {extra}; expected some of {sorted(known)}")


def _span(t: Mapping[str, Any], w: _Where, key: str) -> tuple[float, float]:
    v = _get(t, w, key, list)
    if len(v) != 2 or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        raise w.child(key).error(f"expected [from_s, to_s], got {v!r}")
    lo, hi = float(v[0]), float(v[1])
    if not 0 <= lo < hi:
        raise w.child(key).error(f"expected 0 <= from_s < to_s, got {v!r}")
    return lo, hi


def _tables(doc: Mapping[str, Any], w: _Where, key: str, lim: RigLimits) -> list[dict[str, Any]]:
    v = doc.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise w.child(key).error("expected an array of tables ([[" + key + "]])")
    if len(v) > lim.max_entries:
        raise w.child(key).error(f"{len(v)} entries, at most {lim.max_entries}")
    return v


def parse_faults(
    doc: Mapping[str, Any],
    path: Path,
    limits: RigLimits | None = None,
    lines: Mapping[str, int] | None = None,
) -> tuple[Fault, ...]:
    """The ``[[fault]]`` tables of a parsed TOML document."""
    lim = limits or RigLimits()
    out = []
    root = _Where(path, "", lines or {})
    for i, t in enumerate(_tables(doc, root, "fault", lim)):
        w = root.at(f"fault[{i}]")
        _no_unknown(t, w, {"start_s", "duration_s", "kind", "severity", "signal"})
        kind = _get(t, w, "kind", str)
        if kind not in set(FaultKind):
            raise w.child("kind").error(f"{kind!r} is not one of {[k.value for k in FaultKind]}")
        signal = _get(t, w, "signal", str, "Pressure")
        if signal not in SIGNALS:
            raise w.child("signal").error(f"{signal!r} is not one of {list(SIGNALS)}")
        try:
            out.append(
                Fault(
                    _get(t, w, "start_s", float),
                    _get(t, w, "duration_s", float),
                    FaultKind(kind),
                    _get(t, w, "severity", float, 1.0),
                    signal,
                )
            )
        except ValueError as err:
            raise w.error(str(err)) from None
    return tuple(out)


def read_toml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A TOML file and the line of each of its keys."""
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text), key_lines(text)
    except OSError as err:
        raise RigError(f"cannot read {path}: {err.strerror}", hint="check the path") from err
    except tomllib.TOMLDecodeError as err:
        raise RigError(f"{path}: not valid TOML: {err}", hint="check the line it names") from err


def load_faults(path: Path) -> tuple[Fault, ...]:
    """A fault schedule file: ``[[fault]]`` tables (a rig file works too)."""
    doc, lines = read_toml(path)
    return parse_faults(doc, path, lines=lines)


def load_rig(path: Path, limits: RigLimits | None = None) -> Rig:
    lim = limits or RigLimits()
    doc, lines = read_toml(path)
    root = _Where(path, "", lines)
    _no_unknown(doc, root, {"plant", "probe", "fault", "transport", "expect"})
    plant = _plant(_get(doc, root, "plant", dict, {}), root.child("plant"), lim)
    faults = (DEFAULT_FAULTS if plant[1] == "default" else ()) + parse_faults(doc, path, lim, lines)
    probe_t = _get(doc, root, "probe", dict, {})
    w = root.child("probe")
    _no_unknown(probe_t, w, {"poll_ms", "timeout_ms"})
    probe = ProbeSection(
        _positive_int(probe_t, w, "poll_ms", 100, 60_000),
        _positive_int(probe_t, w, "timeout_ms", 500, 60_000),
    )
    transport = tuple(
        _transport(t, root.at(f"transport[{i}]"), lim)
        for i, t in enumerate(_tables(doc, root, "transport", lim))
    )
    expectations = tuple(
        _expectation(t, root.at(f"expect[{i}]"))
        for i, t in enumerate(_tables(doc, root, "expect", lim))
    )
    if not expectations:
        raise root.child("expect").error("a rig needs at least one [[expect]] table")
    return Rig(path, plant[0], probe, faults, transport, expectations)


def _positive_int(t: Mapping[str, Any], w: _Where, key: str, default: int, hi: int) -> int:
    v: int = _get(t, w, key, int, default)
    if not 0 < v <= hi:
        raise w.child(key).error(f"expected 1..{hi}, got {v}")
    return v


def _plant(t: Mapping[str, Any], w: _Where, lim: RigLimits) -> tuple[PlantSection, str]:
    _no_unknown(t, w, {"seed", "speed", "period_s", "duration_s", "faults", "replay"})
    base = _get(t, w, "faults", str, "none")
    if base not in ("none", "default"):
        raise w.child("faults").error(f"expected 'none' or 'default', got {base!r}")
    duration = _get(t, w, "duration_s", float, 60.0)
    if not 0 < duration <= lim.max_duration_s:
        raise w.child("duration_s").error(f"expected 0 < duration_s <= {lim.max_duration_s}")
    speed = _get(t, w, "speed", float, 1.0)
    period = _get(t, w, "period_s", float, 0.1)
    if speed <= 0 or period <= 0:
        raise w.error("speed and period_s must be positive")
    replay = _get(t, w, "replay", str, None)
    return (
        PlantSection(
            _get(t, w, "seed", int, 0),
            speed,
            period,
            duration,
            (w.path.parent / replay) if replay else None,
        ),
        base,
    )


def _transport(t: Mapping[str, Any], w: _Where, lim: RigLimits) -> TransportFault:
    _no_unknown(t, w, {"start_s", "duration_s", "kind", "delay_ms", "code"})
    kind = _get(t, w, "kind", str)
    if kind not in TRANSPORT_KINDS:
        raise w.child("kind").error(f"{kind!r} is not one of {list(TRANSPORT_KINDS)}")
    start, duration = _get(t, w, "start_s", float), _get(t, w, "duration_s", float)
    if start < 0 or duration <= 0:
        raise w.error("start_s must be >= 0 and duration_s > 0")
    delay = _get(t, w, "delay_ms", int, 0)
    code = _get(t, w, "code", int, 0)
    if kind == "delay" and not 0 < delay <= lim.max_delay_ms:
        raise w.child("delay_ms").error(f"expected 1..{lim.max_delay_ms} for a delay")
    if kind == "exception" and code not in _MODBUS_EXCEPTION_CODES:
        raise w.child("code").error(f"expected a Modbus exception code {_MODBUS_EXCEPTION_CODES}")
    return TransportFault(start, duration, kind, delay, code)


def _expectation(t: Mapping[str, Any], w: _Where) -> Expectation:
    kind = _get(t, w, "kind", str)
    if kind not in EXPECTATION_KINDS:
        raise w.child("kind").error(f"{kind!r} is not one of {list(EXPECTATION_KINDS)}")
    common = {"kind", "window", "name"}
    extra = {
        "reads_ok": {"min_fraction"},
        "reads_fail": {"min_fraction"},
        "exception": {"code"},
        "rises": {"signal", "baseline", "by"},
        "falls": {"signal", "baseline", "by"},
    }[kind]
    _no_unknown(t, w, common | extra)
    window = _span(t, w, "window")
    name = _get(t, w, "name", str, f"{w.key} {kind} {window[0]:g}..{window[1]:g} s")
    if kind in ("reads_ok", "reads_fail"):
        frac = _get(t, w, "min_fraction", float, 0.9)
        if not 0 < frac <= 1:
            raise w.child("min_fraction").error("expected 0 < min_fraction <= 1")
        return Expectation(kind, window, name, min_fraction=frac)
    if kind == "exception":
        return Expectation(kind, window, name, code=_get(t, w, "code", int))
    signal = _get(t, w, "signal", str)
    if signal not in SIGNALS:
        raise w.child("signal").error(f"{signal!r} is not one of {list(SIGNALS)}")
    by = _get(t, w, "by", float)
    if by < 0:
        raise w.child("by").error("expected by >= 0 (use kind = 'falls' for a drop)")
    return Expectation(kind, window, name, signal=signal, baseline=_span(t, w, "baseline"), by=by)


# --- verdicts ------------------------------------------------------------------------


def _within(obs: Sequence[Observation], span: tuple[float, float]) -> list[Observation]:
    return [o for o in obs if span[0] <= o.t_s < span[1]]


def evaluate(expectations: Sequence[Expectation], obs: Sequence[Observation]) -> list[Verdict]:
    """One verdict per expectation; a window without observations fails, never passes."""
    return [_judge(e, obs) for e in expectations]


def _judge(e: Expectation, obs: Sequence[Observation]) -> Verdict:
    seen = _within(obs, e.window)
    if not seen:
        return Verdict(e.name, False, "no probe reads in the window (rig too short?)")
    if e.kind in ("reads_ok", "reads_fail"):
        want_ok = e.kind == "reads_ok"
        frac = sum(o.ok == want_ok for o in seen) / len(seen)
        word = "succeeded" if want_ok else "failed"
        detail = f"{frac:.0%} of {len(seen)} reads {word}, expected >= {e.min_fraction:.0%}"
        return Verdict(e.name, frac >= e.min_fraction, detail)
    if e.kind == "exception":
        codes = sorted({o.exception_code for o in seen if o.exception_code is not None})
        return Verdict(e.name, e.code in codes, f"exception codes seen {codes}, expected {e.code}")
    base = [o.values[e.signal] for o in _within(obs, e.baseline) if o.ok]
    now = [o.values[e.signal] for o in seen if o.ok]
    if not base or not now:
        return Verdict(e.name, False, f"no successful reads of {e.signal} in baseline or window")
    b, m = statistics.fmean(base), statistics.fmean(now)
    change = m - b if e.kind == "rises" else b - m
    verb = "rose" if e.kind == "rises" else "fell"
    detail = f"{e.signal} mean {b:.4g} -> {m:.4g}: {verb} by {change:.4g}, expected >= {e.by:g}"
    return Verdict(e.name, change >= e.by, detail)
