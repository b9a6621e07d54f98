"""hil_tests/tasks.py: a rig stopping its own tasks keeps a Ctrl-C meant for itself, and a
server's connection handlers all end with it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from hil_tests.tasks import ConnectionHandlers, TcpServer, stop_all


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


class _Peer:
    """A connection handler that records that it ran, then waits for ever."""

    def __init__(self) -> None:
        self.served = 0
        self.started = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.served += 1
        self.started.set()
        await asyncio.Event().wait()


async def test_a_connection_whose_handler_task_never_started_is_closed_by_stop() -> None:
    """Python 3.11: a connection made just before the server closed had a handler task that
    had not run its first line, so nothing had seen it, and its transport outlived the loop
    (a Modbus test failed on it once in CI). ``stop`` cancels it before it starts, and the
    connection is closed all the same."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    peer = _Peer()
    handlers = ConnectionHandlers(peer)
    handlers(reader, writer)  # as the server calls it when the connection is made
    await handlers.stop()  # no yield in between: the handler's task has not started
    await writer.wait_closed()
    assert peer.served == 0 and writer.is_closing()
    theirs.settimeout(5)
    assert theirs.recv(1) == b""  # the other end sees the connection closed
    theirs.close()


async def test_stop_ends_every_handler_and_closes_its_connection() -> None:
    peer = _Peer()
    server = await TcpServer.start(peer)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await peer.started.wait()
    await server.stop()
    assert await reader.read() == b""  # end of file: the handler's side was closed
    writer.close()
    await writer.wait_closed()
    assert peer.served == 1


async def test_a_connection_made_after_stop_is_closed_at_once_and_never_served() -> None:
    """The listening socket may still take a connection while its server stops; the
    handlers, stopped, close it without serving it."""
    peer = _Peer()
    handlers = ConnectionHandlers(peer)
    server = await asyncio.start_server(handlers, "127.0.0.1", 0)
    await handlers.stop()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert peer.served == 0
