"""A failing connector is restarted alone (or left off); the others and the agent go on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.backoff import Backoff
from agent.config import parse_config
from agent.connectors.base import Connector, Emit, Sample
from agent.errors import ConfigError
from agent.runtime import AgentRuntime, build_runtime
from attestation.signers.software import SoftwareSigner
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until


@dataclass
class Failing:
    """Raises ``error()`` on its first ``failures`` runs, then emits like a healthy peer."""

    error: Callable[[], Exception]
    failures: int
    name: str = "flaky"
    runs: int = 0

    async def run(self, emit: Emit) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise self.error()
        while True:
            await emit([Sample("flaky", 1.0, "u", 1)])
            await asyncio.sleep(0.01)


async def _start(
    tmp_path: Path, other: Connector, **kw: object
) -> tuple[AgentRuntime, Ticker, asyncio.Event, asyncio.Task[None]]:
    """A runtime with a ticker and ``other``, running until the ticker sent 60 batches."""
    cfg = parse_config(
        '[device]\nname = "gw"\n[window]\nmax_readings = 50\nmax_ms = 50\n'
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(tmp_path / "a.toml"),
        base_dir=tmp_path,
    )
    ticker = Ticker(per_batch=5, period_s=0.01)
    runtime = build_runtime(
        cfg,
        SoftwareSigner.generate(),
        [ticker, other],
        restart_backoff=Backoff(base_s=0.01, cap_s=0.05),
        **kw,  # type: ignore[arg-type]  # test overrides of AgentRuntime fields, passed as **kw
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await until(lambda: ticker.batches >= 60, 30, "the ticker's 60 batches")
    return runtime, ticker, stop, task


async def _run(tmp_path: Path, failing: Failing, **kw: object) -> tuple[AgentRuntime, Ticker]:
    runtime, ticker, stop, task = await _start(tmp_path, failing, **kw)
    stop.set()
    await task
    return runtime, ticker


def _sample(runtime: AgentRuntime, metric: str, connector: str) -> float | None:
    return runtime.metrics.registry.get_sample_value(metric, {"connector": connector})


async def test_a_crashing_connector_is_restarted_and_the_others_never_stop(tmp_path: Path) -> None:
    failing = Failing(lambda: RuntimeError("bug in a decoder"), failures=3)
    runtime, ticker = await _run(tmp_path, failing)
    assert failing.runs == 4  # three crashes, then it ran
    assert _sample(runtime, "factoryops_agent_connector_restarts_total", "flaky") == 3
    assert _sample(runtime, "factoryops_agent_readings_total", "flaky") > 0  # type: ignore[operator]  # the sample exists once the connector ran (None would fail here anyway)
    c = runtime.counters
    assert c.readings_committed == c.readings_acquired  # nothing lost around the crashes
    assert ticker.batches >= 60


async def test_a_connector_with_a_config_error_is_left_off_and_says_why(tmp_path: Path) -> None:
    bad = Failing(lambda: ConfigError("a.toml", "mqtt[0].url", 3, "bad scheme"), failures=99)
    runtime, ticker = await _run(tmp_path, bad)
    assert bad.runs == 1  # a restart cannot fix configuration
    assert "stopped" in runtime.status()["connector_failures"]["flaky"]
    assert _sample(runtime, "factoryops_agent_connector_up", "flaky") == 0
    assert runtime.counters.readings_committed == ticker.batches * 5


async def test_a_connector_that_keeps_failing_is_given_up_after_the_limit(tmp_path: Path) -> None:
    hopeless = Failing(lambda: OSError("device gone"), failures=99)
    runtime, _ = await _run(tmp_path, hopeless, restart_limit=2)
    assert hopeless.runs == 3
    assert "gave up after 2 restarts" in runtime.status()["connector_failures"]["flaky"]


@dataclass
class Deaf:
    """Swallows its cancellation, as pymodbus's connect() and asyncua's disconnect() can, and
    then waits for ``release``: a connector the runtime cannot stop."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    name: str = "deaf"

    async def run(self, emit: Emit) -> None:
        await emit([Sample("deaf", 1.0, "u", time.time_ns())])
        with contextlib.suppress(asyncio.CancelledError):  # the library bug this stands for
            await asyncio.sleep(3600)
        await self.release.wait()


async def test_a_connector_that_ignores_its_stop_does_not_hold_up_the_seal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deaf = Deaf()
    runtime, ticker, stop, task = await _start(tmp_path, deaf, connector_stop_s=0.2)
    stop.set()
    c = runtime.counters
    try:
        await until(  # without the bounded wait nothing is sealed: this times out
            lambda: (
                "connector[deaf] did not stop" in caplog.text
                and c.readings_committed >= c.readings_acquired
            ),
            30,
            "the deaf connector given up on, every reading sealed",
        )
        assert not task.done()  # the process still waits for the deaf connector to end
        assert c.readings_committed == ticker.batches * 5 + 1  # its reading is sealed too
    finally:
        deaf.release.set()  # else the test's own loop could not close
    await task


def test_modbus_and_csv_counters_are_exported() -> None:
    from agent.config import ModbusDeviceConfig, ModbusTag
    from agent.connectors.modbus import ModbusConnector
    from agent.metrics import AgentMetrics

    conn = ModbusConnector(ModbusDeviceConfig("plc", "127.0.0.1", tags=(ModbusTag("p", 0),)))
    conn.timeouts["p"] += 2
    conn.exception_codes["p", 2] += 1
    conn.breaker.record(False, 0.0)
    conn.breaker.record(False, 0.0)
    conn.breaker.record(False, 0.0)
    metrics = AgentMetrics()
    metrics.watch_connectors(lambda: [conn])
    get = metrics.registry.get_sample_value
    assert get("factoryops_agent_modbus_timeouts_total", {"connector": conn.name, "tag": "p"}) == 2
    labels = {"connector": conn.name, "tag": "p", "code": "2"}
    assert get("factoryops_agent_modbus_exceptions_total", labels) == 1
    assert get("factoryops_agent_breaker_trips_total", {"connector": conn.name}) == 1
