"""The agent's event loop: uvloop where it is installed (it is a dependency on Linux and
macOS), asyncio's own elsewhere or when ``FACTORYOPS_EVENT_LOOP=asyncio`` says so.

Why: at a big gateway's rate the agent's loop spends much of its own CPU on socket reads and
writes (Modbus requests and answers) and on wake-ups from the sealing and journal threads,
which uvloop (libuv, in C) does for less. End to end (20 Modbus devices x 100 tags polled
every 10 ms, agent on one core, the server on the other, alternating runs of 8 s): uvloop
won 4 of 4 pairs, median 115,487 -> 124,876 tags/s (+8 %; docs/performance.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["ENV", "run"]

ENV = "FACTORYOPS_EVENT_LOOP"
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop's loop unless ``FACTORYOPS_EVENT_LOOP=asyncio``."""
    if os.environ.get(ENV, "").strip().lower() != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional: not on Windows
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
