"""A slow signer (a real TPM takes ~200 ms) never stalls acquisition: windows grow instead."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent.config import parse_config
from agent.connectors.base import Emit, Sample
from agent.runtime import build_runtime
from attestation import verify_chain
from attestation.signers.base import TpmClock
from attestation.signers.software import SoftwareSigner


@dataclass
class SlowSigner:
    """A real software key whose signatures take ``delay_s``: a timing double of a TPM."""

    inner: SoftwareSigner
    delay_s: float
    kind = "software"
    alg = -7

    def public_key_der(self) -> bytes:
        return self.inner.public_key_der()

    def sign(self, to_be_signed: bytes) -> bytes:
        time.sleep(self.delay_s)
        return self.inner.sign(to_be_signed)

    def clock(self) -> TpmClock | None:
        return None


@dataclass
class Ticker:
    """An acquisition source emitting ``per_batch`` samples every ``period_s``."""

    per_batch: int
    period_s: float
    batches: int = 0
    name: str = "ticker"

    async def run(self, emit: Emit) -> None:
        while True:
            now = time.time_ns()
            await emit([Sample("s", float(i), "u", now) for i in range(self.per_batch)])
            self.batches += 1
            await asyncio.sleep(self.period_s)


async def test_windows_grow_while_the_signer_lags_and_the_chain_holds(tmp_path: Path) -> None:
    cfg = parse_config(
        '[device]\nname = "gw"\n[window]\nmax_readings = 10\nmax_ms = 20\n'
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(tmp_path / "a.toml"),
        base_dir=tmp_path,
    )
    ticker = Ticker(per_batch=10, period_s=0.01)
    runtime = build_runtime(cfg, SlowSigner(SoftwareSigner.generate(), 0.3), [ticker])
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await asyncio.sleep(2.0)
    stop.set()
    await task
    c = runtime.counters
    assert c.backpressure_waits == 0  # acquisition never waited for the signer
    assert c.readings_committed == c.readings_acquired == ticker.batches * 10
    with sqlite3.connect(cfg.spool.path) as db:
        sizes = [n for (n,) in db.execute("SELECT count FROM windows ORDER BY window")]
        cose = [b for (b,) in db.execute("SELECT cose FROM windows ORDER BY window")]
    assert max(sizes) > cfg.window.max_readings * 5  # one signature covered many windows
    assert len(sizes) < ticker.batches / 5
    verify_chain(cose)
