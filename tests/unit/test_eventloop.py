"""The agent runs on uvloop unless told otherwise (agent/eventloop.py)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from agent import eventloop


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_the_agent_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.run(_loop_type()) is uvloop.Loop


def test_asyncio_s_own_loop_when_the_environment_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert not issubclass(eventloop.run(_loop_type()), uvloop.Loop)
