"""The HTTP floor: what the hub's web server alone costs a fleet upload.

``bench fleet`` serves this ASGI app with uvicorn on the hub's settings (the same server,
event loop and keep-alive), pinned to the hub's CPU, and sends it the same gateways' uploads
at the same rate as the largest fleet the hub held. The app reads each body and answers what
the hub answers for one accepted proof, and does nothing else: no parse, no check, no write.
Its CPU a request is the part of the hub's CPU a proof that no change to the hub's own code
can remove while it is served by uvicorn (docs/performance.md).

    python -m benchmarks.httpfloor --port 8099
"""

from __future__ import annotations

import json

import click
from starlette.types import Receive, Scope, Send

__all__ = ["ANSWER", "app"]

ANSWER = json.dumps(
    {"results": [{"window": 1, "status": "accepted", "first_seq": 1000, "last_seq": 1999}]}
).encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the request's body to its end, then answer ``ANSWER`` (any method, any path)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


@click.command()
@click.option("--port", type=int, required=True)
def main(port: int) -> None:
    """Serve the floor app on 127.0.0.1 as ``hub serve`` serves the hub."""
    import uvicorn  # noqa: PLC0415 - only the served process needs it

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=120,  # as bench fleet's hubs (--keep-alive 120)
    )


if __name__ == "__main__":
    main()
