"""The one way a test waits: for a condition, polled, with a bound that only stops a hang.

Never a timing assertion and never a fixed sleep: a test that needs something to have
happened waits until it has (``until`` in async tests, ``until_sync`` in plain ones).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["until", "until_sync"]

_POLL_S = 0.02


def _timed_out(within_s: float, what: str, cond: Callable[[], object]) -> AssertionError:
    return AssertionError(f"not reached within {within_s:g} s: {what or cond}")


async def until(
    cond: Callable[[], object], within_s: float = 60.0, what: str = "", every_s: float = _POLL_S
) -> None:
    """Wait for ``cond`` to be true, polling it on the event loop every ``every_s`` (longer
    for a costly ``cond``); ``what`` names the condition in the failure."""
    try:
        async with asyncio.timeout(within_s):
            while not cond():  # noqa: ASYNC110 - polling state another task or process changes
                await asyncio.sleep(every_s)
    except TimeoutError:
        raise _timed_out(within_s, what, cond) from None


def until_sync(
    cond: Callable[[], object], within_s: float = 60.0, what: str = "", every_s: float = _POLL_S
) -> None:
    """``until`` for a test without an event loop (another thread or process changes what
    ``cond`` reads)."""
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise _timed_out(within_s, what, cond)
        time.sleep(every_s)
