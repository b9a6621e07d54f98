"""hil_tests/tasks.py: a rig stopping its own tasks keeps a Ctrl-C meant for itself."""

from __future__ import annotations

import asyncio

import pytest

from hil_tests.tasks import stop_all


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
        await stop_all([task])
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


async def test_a_background_loop_that_drops_its_cancel_is_still_stopped() -> None:
    """A loop whose first cancel is lost (as Python 3.11's ``wait_for`` loses one that lands
    with its result, inside aiomqtt's connect) ran on for ever, and the rig's task group
    with it; ``stop_all`` cancels again until it has ended."""
    dropped = 0

    async def loop() -> None:
        nonlocal dropped
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if dropped:
                    raise
                dropped += 1  # what the lost cancel looks like from inside: nothing

    async def quiet() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(loop()), asyncio.create_task(quiet())]
    await asyncio.sleep(0)
    await stop_all(tasks, again_s=0.01)
    assert dropped == 1 and all(t.cancelled() for t in tasks)


async def test_stopping_loops_raises_what_one_of_them_failed_with() -> None:
    async def broken() -> None:
        raise OSError("the broker's socket")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="broker"):
        await stop_all([task])
