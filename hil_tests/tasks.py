"""Stopping a rig's own asyncio tasks, and the connection handlers of its TCP servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["ConnectionHandlers", "Handler", "TcpServer", "stop_all"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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


class ConnectionHandlers:
    """An ``asyncio.start_server`` callback that runs ``handle`` for each connection as a
    task it keeps from the moment the connection is made, so ``stop`` ends every one.

    Python 3.11's ``Server.wait_closed`` does not wait for the connections a server accepted,
    and a handler that registers itself in its first line cannot be seen while its task has
    not started: a connection accepted just before ``close`` outlived its server, and its
    transport was still open when the loop closed (a Modbus test failed on it once in CI).
    The server calls this synchronously as each connection is made; one made after ``stop``
    is closed at once."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopped:
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(_served(self._handle, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # however it ends: a task cancelled before it started never ran its handler's close
        task.add_done_callback(lambda _: writer.close())

    async def stop(self) -> None:
        """Refuse new connections and end every handler (``stop_all``: an exception one ended
        with is raised)."""
        self._stopped = True
        await stop_all(list(self._tasks))


class TcpServer:
    """A rig's TCP server on ``host``:``port`` (0: the OS picks; read ``port``) whose ``stop``
    closes it and ends every connection's handler (``ConnectionHandlers``)."""

    def __init__(self, server: asyncio.Server, handlers: ConnectionHandlers) -> None:
        self._server = server
        self._handlers = handlers
        self.port: int = server.sockets[0].getsockname()[1]

    @classmethod
    async def start(cls, handle: Handler, host: str = "127.0.0.1", port: int = 0) -> TcpServer:
        handlers = ConnectionHandlers(handle)
        return cls(await asyncio.start_server(handlers, host, port), handlers)

    async def stop(self) -> None:
        self._server.close()
        await self._handlers.stop()
        await self._server.wait_closed()


async def _served(
    handle: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await handle(reader, writer)  # called here: a task cancelled unstarted makes no coroutine
