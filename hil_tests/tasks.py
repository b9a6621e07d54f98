"""Stopping a rig's own asyncio tasks."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished; the ``CancelledError`` it ends with is
    dropped, but not one meant for the caller. ``with suppress(CancelledError): await task``
    drops both: a Ctrl-C that lands while the caller waits for its child is then lost and
    the caller runs on (Python 3.11's ``Task.cancelling`` tells the two apart)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
