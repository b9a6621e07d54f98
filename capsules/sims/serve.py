"""Serve a capsule's SIMULATED plant over Modbus TCP with hil_tests' server machinery.

``CapsulePlant`` is ``hil_tests.modbus_server.PlantServer``'s sibling: the same ``PlantFeed``
(the source stepped on a wall-clock grid, ``speed`` plant seconds per wall second) and the same
``ModbusFace``, with the capsule's own register map instead of the pump's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from capsules.sims.base import CapsuleSource, make_source, register_map
from capsules.spec import Capsule
from hil_tests.feed import PlantFeed
from hil_tests.modbus_server import ModbusFace
from hil_tests.tasks import stop_all

__all__ = ["CapsulePlant"]


@dataclass
class CapsulePlant:
    """``async with CapsulePlant(cap) as plant:`` serves on ``plant.port`` until the block ends."""

    capsule: Capsule
    port: int = 0
    host: str = "127.0.0.1"
    speed: float = 1.0
    with_faults: bool = True
    source: CapsuleSource = field(init=False)
    feed: PlantFeed = field(init=False)
    modbus: ModbusFace = field(init=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"{self.source.describe()}, x{self.speed:g} speed"

    @property
    def values(self) -> dict[str, float]:
        return dict(self.feed.sample.values)

    async def __aenter__(self) -> CapsulePlant:
        cap = self.capsule
        self.source = make_source(cap, faults=None if self.with_faults else ())
        self.feed = PlantFeed(self.source, period_s=cap.simulator.period_s, speed=self.speed)
        self.modbus = ModbusFace(self.feed, self.host, self.port, register_map=register_map(cap))
        await self.modbus.start()
        self.port = self.modbus.port
        self._task = asyncio.create_task(self.feed.run(), name=f"capsule-plant[{cap.name}]")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_all([task])  # a Ctrl-C landing meanwhile is not dropped with its cancel
        await self.modbus.stop()
