"""Run a connector against a real peer and collect what it emits (connector tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from agent.backoff import Backoff
from agent.connectors.base import Sample, SourceGap
from tests.waiting import until

__all__ = ["running"]

C = TypeVar("C")


@asynccontextmanager
async def running(
    connector: C,
    ready: Callable[[C], bool],
    backoff: Backoff | None = None,
    gaps: list[SourceGap] | None = None,
) -> AsyncIterator[tuple[C, list[Sample]]]:
    """Run ``connector`` with fast reconnects until it is ``ready``; yield it and its samples
    (and collect the source gaps it states into ``gaps`` when given)."""
    got: list[Sample] = []

    async def emit(samples: list[Sample], stated: Sequence[SourceGap] = ()) -> None:
        got.extend(samples)
        if gaps is not None:
            gaps.extend(stated)

    c: Any = connector
    c.reconnector.backoff = backoff or Backoff(base_s=0.05, cap_s=0.5)
    task = asyncio.create_task(c.run(emit))
    try:
        await until(lambda: ready(connector) or task.done())
        if task.done():
            task.result()  # the connector died: show why
        yield connector, got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
