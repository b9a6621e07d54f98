"""A TCP fault proxy: sits between the agent and a peer (the PLC, the hub) and adds latency,
loss or a partition on command, the way a bad plant network does.

- ``latency_ms``: every chunk, both ways, waits this long before it is forwarded.
- ``loss``: a share of chunks is held back by a retransmission timeout (200 ms, Linux's
  minimum RTO) before delivery: what packet loss looks like from above TCP, which never
  drops bytes but stalls.
- ``partition``: nothing is forwarded and new connections are accepted but never answered, as
  when a switch dies: peers see timeouts, not resets. Held bytes flow again when it heals.
- ``cut``: every open connection is closed and new ones are closed at once, as when the
  peer's device or socket goes away: peers see resets and end-of-file, not silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

from hil_tests.tasks import TcpServer

__all__ = ["FaultProxy"]

RTO_S = 0.2  # Linux TCP_RTO_MIN: the least a lost segment costs
CHUNK = 64 * 1024


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks; read ``port`` after ``start``
    latency_ms: int = 0
    loss: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    connections: int = 0
    _partitioned: asyncio.Event = field(default_factory=asyncio.Event)  # set = healthy
    _cut: bool = False
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)  # both ends of each
    _server: TcpServer | None = None

    async def start(self) -> FaultProxy:
        self._partitioned.set()
        self._server = await TcpServer.start(self._accept, self.host, self.port)
        self.port = self._server.port
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def partition(self, on: bool) -> None:
        if on:
            self._partitioned.clear()
        else:
            self._partitioned.set()

    def cut(self) -> None:
        self._cut = True
        for w in list(self._writers):  # each pump then meets end-of-file or a reset
            w.close()

    def heal(self) -> None:
        self.latency_ms, self.loss, self._cut = 0, 0.0, False
        self.partition(False)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self._cut:
                return
            await self._partitioned.wait()  # the kernel completed the handshake; nothing more
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            self._writers |= {writer, up_writer}
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(reader, up_writer))
                tg.create_task(self._pump(up_reader, writer))
        except (OSError, ExceptionGroup):
            pass  # one side went away: the other is closed below, as a cut cable would
        finally:
            self._writers.discard(writer)
            if up_writer is not None:
                self._writers.discard(up_writer)
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Each chunk is due ``latency`` after it arrived (pipelined, as on a real link: a
        second request does not wait for the first one's delay), in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self._partitioned.wait()
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await src.read(CHUNK):
                delay = self.latency_ms / 1000
                if self.loss and self.rng.random() < self.loss:
                    delay += RTO_S
                await queue.put((loop.time() + delay, data))
            await queue.put((0.0, b""))
            await sender
        finally:
            sender.cancel()
            dst.close()
