"""What the agent runtime drives, built outside it: the spool (and the one thread its main
connection is used from), the uplink to the hub and the hub-log watch.

``default_ports`` builds them from a config, as ``factoryops agent run`` does; a test or
another deployment builds its own (another spool, an uplink with other settings, none) and
hands them to ``AgentRuntime`` (code review, change 4: "give the agent real ports").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from agent.config import AgentConfig
from agent.logwatch import LogWatch
from agent.metrics import AgentMetrics
from agent.spool import Spool
from agent.uplink import DeviceToken, Uplink
from attestation.signers.base import Signer

__all__ = ["Ports", "SpoolThread", "default_ports"]

T = TypeVar("T")


@dataclass
class SpoolThread:
    """The one thread the spool's main connection is used from (SQLite connections are used
    by one thread at a time; commits and reads must not stall the event loop)."""

    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="spool")
    )

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def shutdown(self) -> None:
        self.executor.shutdown()


@dataclass(frozen=True, slots=True)
class Ports:
    """The runtime's spool, its thread, and (with a hub) the uplink and the log watch.
    ``AgentRuntime.run`` closes the spool and the thread when it ends."""

    spool: Spool
    spool_thread: SpoolThread
    uplink: Uplink | None = None
    logwatch: LogWatch | None = None


def default_ports(config: AgentConfig, signer: Signer, metrics: AgentMetrics) -> Ports:
    """The ports a config asks for: its spool; with ``[hub] url`` an uplink (an enrolled TPM
    key authenticates with device tokens, a development key does not) and, with
    ``[hub] log_key``, a watch of the hub's log."""
    spool = Spool(config.spool.path)
    thread = SpoolThread()
    hub = config.hub
    if not hub.url:
        return Ports(spool, thread)

    def synced(windows: list[int]) -> None:
        metrics.synced.inc(len(windows))
        metrics.last_sync.set(time.time())

    uplink = Uplink(
        spool,
        hub.url,
        thread.call,
        batch=hub.batch_proofs,
        timeout_s=hub.timeout_s,
        on_synced=synced,
        device_token=DeviceToken(hub.url, signer) if signer.kind == "tpm" else None,
        signer_der=signer.public_key_der(),
        on_failure=metrics.uplink_failures.inc,
    )
    logwatch = None
    if hub.log_key is not None:
        logwatch = LogWatch(
            hub.url, hub.log_key, config.spool.path.with_name("hub-checkpoints.json")
        )
    return Ports(spool, thread, uplink, logwatch)
