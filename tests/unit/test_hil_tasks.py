"""hil_tests/tasks.py: a rig stopping its own tasks keeps a Ctrl-C meant for itself."""

from __future__ import annotations

import asyncio

import pytest

from hil_tests.tasks import cancel_and_wait


async def test_a_cancel_meant_for_the_waiter_is_not_dropped_with_the_childs() -> None:
    """Ctrl-C (a cancel of the caller) landing while the caller waits for a child it
    cancelled: ``suppress(CancelledError)`` lost it and the caller ran on; it propagates."""
    release = asyncio.Event()

    async def child() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()  # its clean-up takes a while

    async def caller(task: asyncio.Task[None]) -> str:
        await cancel_and_wait(task)
        return "ran on"

    task = asyncio.create_task(child())
    await asyncio.sleep(0)  # the child is running
    waiter = asyncio.create_task(caller(task))
    await asyncio.sleep(0)  # the caller waits for the child's clean-up
    waiter.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert task.cancelled()

    alone = asyncio.create_task(child())  # nobody cancels the caller: it returns
    await asyncio.sleep(0)
    assert await caller(alone) == "ran on" and alone.cancelled()
