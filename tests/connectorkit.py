"""Run a connector against a real peer and collect what it emits (connector tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from agent.backoff import Backoff
from agent.connectors.base import Sample

__all__ = ["running", "until"]

C = TypeVar("C")


async def until(cond: Callable[[], bool], within_s: float = 30.0) -> None:
    """Wait for ``cond`` (polled; never a timing assertion: the bound only stops a hang)."""
    async with asyncio.timeout(within_s):
        while not cond():  # noqa: ASYNC110 - polling what a connector collected
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running(
    connector: C, ready: Callable[[C], bool], backoff: Backoff | None = None
) -> AsyncIterator[tuple[C, list[Sample]]]:
    """Run ``connector`` with fast reconnects until it is ``ready``; yield it and its samples."""
    got: list[Sample] = []

    async def emit(samples: list[Sample]) -> None:
        got.extend(samples)

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
