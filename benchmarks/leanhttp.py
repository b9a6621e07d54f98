"""A lean HTTP/1.1 client for the hub benchmarks: one connection, one request at a time.

The request bytes are written as they are (in parts, so a body shared by many requests is
never copied) and the answer is read by its Content-Length. A full client (httpx) spent
~1 ms of CPU a request; with the hub confined to one core, the load generator must not be
what limits the rate it measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

__all__ = ["LeanConnection"]


class LeanConnection:
    """``POST /v1/proofs`` on one keep-alive connection (``close=True``: one request, then
    the hub closes it, as a client that never reuses a connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> LeanConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, parts: Sequence[bytes], *, close: bool = False) -> tuple[bytes, bytes]:
        """Send one upload body (its parts back to back); the status line and the answer."""
        length = sum(map(len, parts))
        self.writer.write(
            b"POST /v1/proofs HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/cbor\r\ncontent-length: %d\r\n%s\r\n"
            % (length, b"connection: close\r\n" if close else b"")
        )
        self.writer.writelines(parts)
        head = await self.reader.readuntil(b"\r\n\r\n")
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        answer = await self.reader.readexactly(int(fields.get(b"content-length", b"0")))
        return head.split(b"\r\n", 1)[0], answer

    def close(self) -> None:
        self.writer.close()
