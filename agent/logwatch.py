"""Follow the hub's transparency log: remember its newest checkpoint, report any fork.

Every ``interval_s`` the agent fetches ``/v1/log/checkpoint``, checks its signature with
the key pinned at registration (``hub-log.vkey``) and, when the tree grew, a consistency
proof from the remembered tree (``attestation.witness``). The memory is a file next to
the spool, so a restart keeps following the same history. A fork is logged as an error,
kept with both signed notes as evidence, and shown in ``status()`` and the metrics; the
agent keeps its own data and goes on (its proofs stay valid whatever the hub does).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from attestation.errors import AttestationError
from attestation.signednote import NoteVerifier
from attestation.witness import CheckpointMemory, Judgement

__all__ = ["LogWatch"]

log = logging.getLogger(__name__)


@dataclass
class LogWatch:
    url: str
    vkey_file: Path
    memory_file: Path
    interval_s: float = 30.0
    timeout_s: float = 10.0
    last: Judgement | None = None
    fork: str | None = None
    checks: int = 0
    _memory: CheckpointMemory | None = field(default=None, init=False)

    def _open(self) -> CheckpointMemory:
        if self._memory is None:
            verifier = NoteVerifier.from_vkey(self.vkey_file.read_text().strip())
            self._memory = CheckpointMemory(self.memory_file, [verifier])
        return self._memory

    def check_once(self) -> Judgement:
        """One round (blocking: run it in a thread)."""
        memory = self._open()
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            r = client.get("/v1/log/checkpoint")
            r.raise_for_status()

            def proofs(size1: int, size2: int) -> list[bytes]:
                p = client.get("/v1/log/proof/consistency", params={"from": size1, "to": size2})
                p.raise_for_status()
                return [base64.b64decode(h) for h in p.json()["proof"]]

            judgement = memory.observe(r.text, proofs)
        self.checks += 1
        self.last = judgement
        if not judgement.ok:
            self.fork = judgement.detail
            log.error("hub log: %s (evidence in %s)", judgement.detail, self.memory_file)
        return judgement

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.check_once)
            except (httpx.HTTPError, AttestationError, ValueError, OSError) as err:
                # an unreachable hub is the uplink's business; a bad signature is logged;
                # no pinned key yet (not registered): tried again next round
                log.warning("hub log: checkpoint not checked: %s", err)
            await asyncio.sleep(self.interval_s)
