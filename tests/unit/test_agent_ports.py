"""The runtime's ports are built outside it: a test (or another deployment) swaps one alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.config import parse_config
from agent.metrics import AgentMetrics
from agent.ports import Ports, SpoolThread, default_ports
from agent.runtime import AgentRuntime
from agent.spool import Spool
from attestation.signers.software import SoftwareSigner
from tests.unit.test_agent_slow_signer import Ticker
from tests.waiting import until

TOML = (
    '[device]\nname = "gw"\n{hub}[window]\nmax_readings = 10\nmax_ms = 20\n'
    '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\naddress = 0\n'
)


def test_default_ports_follow_the_config(tmp_path: Path) -> None:
    signer, metrics = SoftwareSigner.generate(), AgentMetrics()
    offline = parse_config(TOML.format(hub=""), str(tmp_path / "a.toml"), base_dir=tmp_path)
    ports = default_ports(offline, signer, metrics)
    assert (ports.uplink, ports.logwatch) == (None, None)
    assert ports.spool.path == offline.spool.path
    ports.spool.close()
    hub = '[hub]\nurl = "http://127.0.0.1:9"\nlog_key = "k.vkey"\n'
    online = parse_config(TOML.format(hub=hub), str(tmp_path / "b.toml"), base_dir=tmp_path)
    ports = default_ports(online, signer, metrics)
    assert ports.uplink is not None and ports.uplink.spool is ports.spool
    assert ports.uplink.device_token is None  # a development key does not authenticate
    assert ports.logwatch is not None
    ports.spool.close()


async def test_an_injected_spool_is_the_one_the_runtime_seals_into(tmp_path: Path) -> None:
    cfg = parse_config(TOML.format(hub=""), str(tmp_path / "a.toml"), base_dir=tmp_path)
    elsewhere = tmp_path / "other" / "spool.db"
    ports = Ports(Spool(elsewhere), SpoolThread())
    rt = AgentRuntime(cfg, SoftwareSigner.generate(), [Ticker(10, 0.01)], ports)
    stop = asyncio.Event()
    task = asyncio.create_task(rt.run(stop))
    await until(lambda: rt.counters.windows_signed >= 2, what="two windows sealed")
    stop.set()
    await task
    assert not await asyncio.to_thread(cfg.spool.path.exists)  # the config's spool: untouched
    spool = Spool(elsewhere)
    try:
        assert spool.counts()["windows"] >= 2
    finally:
        spool.close()
