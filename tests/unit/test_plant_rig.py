"""HIL rig files: bad keys are named with file and key; verdicts judge exactly the window."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil_tests.errors import RigError
from hil_tests.plant import DEFAULT_FAULTS, FaultKind
from hil_tests.rig import Expectation, Observation, evaluate, load_faults, load_rig

EXAMPLE = Path(__file__).resolve().parents[2] / "hil_tests" / "rigs" / "pump_faults.toml"
MINIMAL = '[[expect]]\nkind = "reads_ok"\nwindow = [0, 5]\n'


def rig_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rig.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_example_rig_loads() -> None:
    rig = load_rig(EXAMPLE)
    assert {t.kind for t in rig.transport} == {"drop", "delay", "exception"}
    assert [f.kind for f in rig.faults] == [FaultKind.CAVITATION]
    assert len(rig.expectations) == 7


def test_a_default_base_schedule_is_extended_by_fault_tables(tmp_path: Path) -> None:
    text = '[plant]\nfaults = "default"\n[[fault]]\nkind = "sensor_spike"\nstart_s = 1\n'
    text += 'duration_s = 2\nsignal = "Current"\n' + MINIMAL
    rig = load_rig(rig_file(tmp_path, text))
    assert rig.faults[: len(DEFAULT_FAULTS)] == DEFAULT_FAULTS
    assert rig.faults[-1].signal == "Current"


def test_a_fault_schedule_file_reads_only_fault_tables(tmp_path: Path) -> None:
    path = rig_file(tmp_path, '[[fault]]\nkind = "bearing_wear"\nstart_s = 0\nduration_s = 9\n')
    (fault,) = load_faults(path)
    assert fault.kind is FaultKind.BEARING_WEAR and fault.severity == 1.0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[[fault]]\nkind = "melt"\nstart_s = 0\nduration_s = 1\n', r"fault\[0\]\.kind: 'melt'"),
        ('[[fault]]\nkind = "cavitation"\nduration_s = 1\n', r"fault\[0\]\.start_s: is required"),
        (
            '[[fault]]\nkind = "cavitation"\nstart_s = 0\nduration_s = 1\nseverity = 2.0\n',
            r"fault\[0\]: fault severity must be within 0\.\.1",
        ),
        ('[[transport]]\nkind = "unplug"\nstart_s = 0\nduration_s = 1\n', r"transport\[0\]\.kind"),
        (
            '[[transport]]\nkind = "exception"\nstart_s = 0\nduration_s = 1\ncode = 99\n',
            r"transport\[0\]\.code: expected a Modbus exception code",
        ),
        (
            '[[transport]]\nkind = "delay"\nstart_s = 0\nduration_s = 1\n',
            r"transport\[0\]\.delay_ms: expected 1\.\.60000",
        ),
        ('[[expect]]\nkind = "reads_ok"\nwindow = [5, 1]\n', r"expect\[0\]\.window: expected 0 <="),
        (
            '[[expect]]\nkind = "rises"\nwindow = [1, 2]\nsignal = "Humidity"\n',
            r"expect\[0\]\.signal: 'Humidity'",
        ),
        ("[plant]\nspeeed = 3\n" + MINIMAL, r"plant: unknown keys \['speeed'\]"),
        ('[plant]\nseed = "seven"\n' + MINIMAL, r"plant\.seed: expected int, got 'seven'"),
        ("[plant]\nduration_s = 0\n" + MINIMAL, r"plant\.duration_s: expected 0 < duration_s"),
        ("[plant]\n", r"expect: a rig needs at least one \[\[expect\]\] table"),
        ("[plant\n", r"not valid TOML"),
    ],
)
def test_a_bad_rig_file_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, where: str
) -> None:
    path = rig_file(tmp_path, text)
    with pytest.raises(RigError, match=rf"rig\.toml(:\d+)?: .*{where}") as err:
        load_rig(path)
    assert err.value.hint


def test_a_bad_rig_key_is_named_with_its_line(tmp_path: Path) -> None:
    path = rig_file(tmp_path, '[plant]\nseed = 1\nspeed = "fast"\n[[expect]]\nkind = "reads_ok"\n')
    with pytest.raises(RigError, match=r"rig\.toml:3: plant\.speed: expected float"):
        load_rig(path)


def obs(t: float, ok: bool = True, code: int | None = None, v: float = 0.0) -> Observation:
    return Observation(t, ok, code, {"Pressure": v} if ok else {})


def test_reads_fail_passes_only_when_enough_reads_in_the_window_failed() -> None:
    e = Expectation("reads_fail", (10, 20), "down", min_fraction=0.75)
    seen = [obs(5), obs(11, False), obs(12, False), obs(13, False), obs(14), obs(25)]
    (v,) = evaluate([e], seen)
    assert v.passed and "75% of 4 reads failed" in v.detail
    (v,) = evaluate([e], [*seen, obs(15)])
    assert not v.passed


def test_an_empty_window_fails_rather_than_passing_vacuously() -> None:
    (v,) = evaluate([Expectation("reads_ok", (100, 200), "late")], [obs(1)])
    assert not v.passed and "no probe reads" in v.detail


def test_an_exception_expectation_needs_that_exact_code() -> None:
    e = Expectation("exception", (0, 10), "busy", code=6)
    assert not evaluate([e], [obs(1, False, 4)])[0].passed
    assert evaluate([e], [obs(1, False, 4), obs(2, False, 6)])[0].passed


def test_rises_and_falls_compare_window_mean_with_baseline_mean() -> None:
    seen = [obs(t, v=1.0) for t in range(5)] + [obs(t, v=1.5) for t in range(10, 15)]
    rises = Expectation("rises", (10, 15), "up", signal="Pressure", baseline=(0, 5), by=0.4)
    falls = Expectation("falls", (10, 15), "down", signal="Pressure", baseline=(0, 5), by=0.1)
    up, down = evaluate([rises, falls], seen)
    assert up.passed and "rose by 0.5" in up.detail
    assert not down.passed
