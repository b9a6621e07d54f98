"""Handing back a cancellation that a library swallowed, so a stop never hangs.

Shared by the agent's connectors and the HIL rigs' probes: both drive the same libraries.
"""

from __future__ import annotations

import asyncio

__all__ = ["reraise_if_cancelling"]


def reraise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    The task still counts a cancellation a library ate, so ask the task and hand it back, or
    stopping the agent hangs. asyncua's ``Client.disconnect`` awaits its own tasks with
    ``except CancelledError: pass``, which also eats one aimed at *our* task while it waits.
    pymodbus awaits connects and replies with ``asyncio.wait_for``, which on Python 3.11 can
    swallow a cancellation that races with the answer (cpython gh-86296): ``connect()`` then
    returns False, and a cancellation mid-request becomes a ModbusIOException.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
