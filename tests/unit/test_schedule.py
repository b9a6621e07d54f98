"""hil_tests/schedule.py: the demo's line about the simulated plant, for the pump's faults and
a capsule's alike."""

from __future__ import annotations

import pytest

from hil_tests.schedule import ScheduledFault, plant_now

SCHEDULE = (
    ScheduledFault(100.0, 50.0, "drift on melt_temperature"),
    ScheduledFault(300.0, 20.0, "spike on roll_force"),
)


@pytest.mark.parametrize(
    ("t_s", "line"),
    [
        (0.0, "normal operation; next fault in 100 s"),
        (100.0, "FAULT: drift on melt_temperature, expect anomalies"),
        (149.9, "FAULT: drift on melt_temperature, expect anomalies"),
        (150.0, "normal operation; next fault in 150 s"),
        (310.0, "FAULT: spike on roll_force, expect anomalies"),
        (320.0, "normal operation (the fault schedule is over)"),
    ],
)
def test_the_line_follows_the_schedule(t_s: float, line: str) -> None:
    assert plant_now(SCHEDULE, t_s) == line


def test_an_after_effect_the_caller_states_is_said_and_the_next_fault_still_counted() -> None:
    cooling = "recovering: still cooling, expect anomalies until it settles"
    assert plant_now(SCHEDULE, 160.0, cooling) == f"{cooling}; next fault in 140 s"
    assert plant_now(SCHEDULE, 400.0, cooling) == cooling
    assert plant_now(SCHEDULE, 105.0, cooling).startswith("FAULT: drift")  # the fault first


def test_no_schedule_is_normal_operation() -> None:
    assert plant_now((), 5.0) == "normal operation (the fault schedule is over)"
