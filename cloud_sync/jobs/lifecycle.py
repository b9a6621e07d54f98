"""A job's lifecycle as a transition table (pure): which event moves which state where.

``queued -> running -> succeeded | failed | cancelled``; ``dead`` is the dead-letter state of
a job whose runs all ended without an outcome (the worker died each time). A running job may
start again: that is a redelivery after its worker died, counted in ``attempts``.
"""

from __future__ import annotations

import enum

__all__ = ["TERMINAL", "IllegalTransition", "JobEvent", "JobState", "advance", "sources"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"


class JobEvent(enum.StrEnum):
    START = "start"  # a worker took the job (again, after a redelivery)
    SUCCEED = "succeed"
    FAIL = "fail"  # the job raised, or could not be queued
    CANCEL = "cancel"
    DEAD_LETTER = "dead_letter"  # delivered past the run limit without an outcome


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD})

_Q, _R = JobState.QUEUED, JobState.RUNNING
TRANSITIONS: dict[tuple[JobState, JobEvent], JobState] = {
    (_Q, JobEvent.START): _R,
    (_R, JobEvent.START): _R,
    (_R, JobEvent.SUCCEED): JobState.SUCCEEDED,
    (_Q, JobEvent.FAIL): JobState.FAILED,
    (_R, JobEvent.FAIL): JobState.FAILED,
    (_Q, JobEvent.CANCEL): JobState.CANCELLED,
    (_R, JobEvent.CANCEL): JobState.CANCELLED,
    (_Q, JobEvent.DEAD_LETTER): JobState.DEAD,
    (_R, JobEvent.DEAD_LETTER): JobState.DEAD,
}


class IllegalTransition(RuntimeError):
    """Our own bug, or a race lost: ``event`` is not allowed in ``state``."""

    def __init__(self, state: JobState, event: JobEvent) -> None:
        super().__init__(f"job event {event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


def advance(state: JobState, event: JobEvent) -> JobState:
    """The state after ``event``, or IllegalTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def sources(event: JobEvent) -> tuple[JobState, ...]:
    """The states ``event`` may leave (the store's compare-and-set condition)."""
    return tuple(s for (s, e) in TRANSITIONS if e is event)
