"""MQTT acknowledgements sent only once a message's readings are durable in the spool.

A QoS 1 message the agent acknowledges is gone from the broker. Acknowledged as soon as the
runtime's queue took it, a kill -9 before the next journal batch lost it (the 50-kill soak
rig lost 9.1 % of node readings that way). Here each taken message waits in order until
``journaled()`` (the runtime's: journaled and fsynced, or committed) covers it, and only then
is its PUBACK sent; a kill before that leaves it with the broker, which delivers it again to
the persistent session. One ``journaled()`` call covers every message taken before it, so a
burst costs one wait, not one per message. PUBACKs go out in the order the messages came
(MQTT 3.1.1 §4.6). Unacknowledged messages are bounded by the broker's in-flight window.

The replay state a node-v1 section saves follows the acknowledgements: a (boot, seq) is
saved only once its reading is durable, so a message delivered again after a kill is
admitted, not refused as a replay of itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.connectors.base import Journaled

__all__ = ["DurableAcks", "NodePair"]

NodePair = tuple[str, int, int]  # node, boot, seq of an admitted node reading


@dataclass
class DurableAcks:
    """``taken`` for each message once ``emit`` returned; ``run`` sends the acks."""

    ack: Callable[[int, int], object]  # paho's ack(mid, qos)
    journaled: Journaled | None  # None: no runtime to wait for (a test's emit): ack at once
    durable: dict[str, list[int]]  # node -> [boot, seq] durable and acknowledged
    _pending: asyncio.Queue[tuple[int, int, NodePair | None]] = field(default_factory=asyncio.Queue)

    def taken(self, mid: int, qos: int, pair: NodePair | None) -> None:
        if self.journaled is None:
            self._send([(mid, qos, pair)])
        else:
            self._pending.put_nowait((mid, qos, pair))

    async def run(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty():
                batch.append(self._pending.get_nowait())
            assert self.journaled is not None  # only queued when there is one
            await self.journaled()
            self._send(batch)

    def _send(self, batch: list[tuple[int, int, NodePair | None]]) -> None:
        for mid, qos, pair in batch:
            if qos > 0:
                self.ack(mid, qos)
            if pair is not None:
                node, boot, seq = pair
                self.durable[node] = [boot, seq]
