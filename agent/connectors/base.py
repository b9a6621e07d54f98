"""The connector port: how any acquisition adapter hands samples to the runtime.

A connector owns one peer (a PLC, a broker topic set, a serial line, a folder). The
runtime assigns seqs; connectors only say what was read, when, and how good it is, and
which of their sources should have produced readings and did not (``SourceGap``, passed to
``emit`` with or without samples; ``SourceWatch`` in ``common.py`` builds them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from attestation.microproof import SourceGap

__all__ = [
    "BAD_ENCODING_LIMITS_EXCEEDED",
    "QUALITY_BAD",
    "QUALITY_GOOD",
    "QUALITY_UNCERTAIN",
    "Committed",
    "Connector",
    "Emit",
    "Expect",
    "Journaled",
    "NeedsCommit",
    "NeedsExpect",
    "NeedsJournaled",
    "Sample",
    "SourceGap",
]

# OPC UA StatusCode severities (Part 4 §7.39): top two bits 00 good, 01 uncertain, 10 bad.
QUALITY_GOOD = 0x00000000
QUALITY_UNCERTAIN = 0x40000000
QUALITY_BAD = 0x80000000
# A named Bad code (Part 6 Annex A) a connector sets itself. A read that failed sets none:
# it emits no reading and states a source gap instead (ADR 0016).
BAD_ENCODING_LIMITS_EXCEEDED = 0x80080000  # a text value cut to fit a leaf


class Sample(NamedTuple):
    """One value read from a signal, before the runtime gives it a seq.

    A named tuple, not a frozen dataclass: a big gateway builds one per tag read, ~60,000 a
    second, and a tuple is built ~2.5x faster (immutable and hashable all the same)."""

    signal: str
    value: float | str  # text for a value that is not a number (an OPC UA String)
    unit: str
    ts_ns: int
    quality: int = QUALITY_GOOD


class Emit(Protocol):
    """What a connector calls with each batch it read and the source gaps it saw."""

    # positional-only: a connector's own emit (a test's, a benchmark's) may name them freely
    def __call__(
        self, samples: list[Sample], gaps: Sequence[SourceGap] = (), /
    ) -> Awaitable[None]: ...


# Returns once every sample emitted before the call is committed in the spool (signed,
# fsynced): what a connector waits for before it tells its source "done" (a CSV ledger).
Committed = Callable[[], Awaitable[None]]
# Returns once every sample emitted before the call is durable in the spool (journaled and
# fsynced, or committed): what a source that delivers again until acknowledged (an MQTT
# broker) waits for before its ack, so a kill -9 loses nothing it acknowledged.
Journaled = Callable[[], Awaitable[None]]
# Called before a read that will yield up to ``n`` samples: returns once the agent's durable
# seq mark covers them, so a kill that lands while the answer is on its way states it lost
# (ADR 0017). Each call replaces the connector's previous expectation.
Expect = Callable[[int], Awaitable[None]]


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


@runtime_checkable
class NeedsExpect(Protocol):
    """A connector that knows before a read how many samples it will yield (a poll)."""

    def bind_expect(self, expect: Expect) -> None: ...


@runtime_checkable
class NeedsJournaled(Protocol):
    """A connector that acknowledges its source only once readings are journaled."""

    def bind_journaled(self, journaled: Journaled) -> None: ...
