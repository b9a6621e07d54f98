"""Stopping a rig's own asyncio tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["stop_all"]


async def stop_all(tasks: Sequence[asyncio.Task[Any]], again_s: float = 1.0) -> None:
    """Cancel a rig's own tasks (feeds, servers' loops, subscribers) and wait until every one
    has ended, cancelling again each ``again_s`` one that has not; an exception one ended with
    (not its cancel) is raised.

    One cancel is not always enough: on Python 3.11 ``asyncio.wait_for`` returns its result
    and drops the cancel when both arrive together (fixed in 3.12), and aiomqtt waits for its
    CONNACK and SUBACK that way, so a Ctrl-C that lands while the rig's subscriber connects
    is lost (4 of 400 cancels at random moments of a connect here) and a task group waiting
    for it waits for ever. A Ctrl-C that lands while the caller waits here (a cancel of the
    caller) is not dropped with the tasks' own: they are still stopped, then it is raised;
    ``with suppress(CancelledError): await task`` dropped both, and the caller ran on."""
    pending = {t for t in tasks if not t.done()}
    interrupted = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=again_s)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    for task in tasks:
        if not task.cancelled() and (err := task.exception()) is not None:
            raise err
