"""The connector port: how any acquisition adapter hands samples to the runtime.

A connector owns one peer (a PLC, a broker topic set, a serial line, a folder). The
runtime assigns seqs; connectors only say what was read, when, and how good it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "QUALITY_BAD",
    "QUALITY_GOOD",
    "QUALITY_UNCERTAIN",
    "Committed",
    "Connector",
    "Emit",
    "NeedsCommit",
    "Sample",
]

# OPC UA StatusCode severities (Part 4 §7.39): top two bits 00 good, 01 uncertain, 10 bad.
QUALITY_GOOD = 0x00000000
QUALITY_UNCERTAIN = 0x40000000
QUALITY_BAD = 0x80000000


@dataclass(frozen=True, slots=True)
class Sample:
    """One value read from a signal, before the runtime gives it a seq."""

    signal: str
    value: float
    unit: str
    ts_ns: int
    quality: int = QUALITY_GOOD


Emit = Callable[[list[Sample]], Awaitable[None]]
# Returns once every sample emitted before the call is committed in the spool (signed,
# fsynced): what a connector waits for before it tells its source "done" (a CSV ledger).
Committed = Callable[[], Awaitable[None]]


@runtime_checkable
class Connector(Protocol):
    """An acquisition adapter; ``run`` returns only when cancelled or on a fatal error.

    ``run`` calls ``emit`` with each batch it reads. ``emit`` applies backpressure: it
    awaits while the runtime's bounded queue is full, so a connector never buffers
    without bound. Transient peer failures are handled inside ``run`` (reconnect with
    backoff, counted in metrics); only configuration errors escape.
    """

    @property
    def name(self) -> str: ...

    async def run(self, emit: Emit) -> None: ...


@runtime_checkable
class NeedsCommit(Protocol):
    """A connector that must know when its readings are durable (exactly-once sources)."""

    def bind_committed(self, committed: Committed) -> None: ...
