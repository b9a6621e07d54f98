"""The agent's TPM (a SIMULATED one: swtpm) goes away and comes back reset while readings
flow: acquisition never waits for it, the windows closed meanwhile are signed once it is
back, the chain holds, and the TPM clock in the proofs shows the reset."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.connectors.base import Emit, Sample
from agent.runtime import build_runtime
from attestation import parse_microproof, verify_chain
from provisioning.swtpm import SwtpmProcess
from tests.waiting import until

pytestmark = [pytest.mark.tpm, pytest.mark.timeout(120)]


@dataclass
class Ticker:
    """Emits one sample every ``period_s`` and counts them."""

    period_s: float
    sent: int = 0
    name: str = "ticker"

    async def run(self, emit: Emit) -> None:
        while True:
            await emit([Sample("s", float(self.sent), "u", time.time_ns())])
            self.sent += 1
            await asyncio.sleep(self.period_s)


async def test_acquisition_goes_on_while_the_tpm_is_away_and_windows_are_signed_after(
    tmp_path: Path, swtpm: SwtpmProcess
) -> None:
    from attestation.signers.tpm import TpmSigner

    own = SwtpmProcess(tmp_path / "tpm").start()
    signer = TpmSigner.open(own.tcti)
    cfg = parse_config(
        '[device]\nname = "gw"\n[window]\nmax_readings = 1000\nmax_ms = 100\n'
        '[spool]\npath = "spool.db"\n'
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(tmp_path / "a.toml"),
        base_dir=tmp_path,
    )
    source = Ticker(0.01)
    runtime = build_runtime(cfg, signer, [source])
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await until(lambda: runtime.counters.windows_signed >= 3, what="signed with the TPM")
        own.stop()
        at_stop = (source.sent, runtime.counters.windows_signed)
        await until(lambda: runtime.counters.signer_retries >= 2, what="seals retried")
        # the TPM is away: readings still come in and reach the journal
        await until(lambda: source.sent >= at_stop[0] + 50, what="acquisition going on")
        assert runtime.counters.windows_signed <= at_stop[1] + 1  # one may have been signing
        acquired_while_away = runtime.counters.readings_acquired
        own.start()  # the same state, a TPM Reset
        await until(
            lambda: runtime.counters.readings_committed >= acquired_while_away,
            what="what came in while the TPM was away, signed",
        )
    finally:
        stop.set()
        await task
        signer.close()
        own.stop()
    with contextlib.closing(sqlite3.connect(tmp_path / "spool.db")) as db:
        coses = [c for (c,) in db.execute("SELECT cose FROM windows ORDER BY window")]
    verify_chain(coses)  # no hole, no fork across the outage
    clocks = [parse_microproof(c).proof.tpm_clock for c in coses]
    resets = [c.reset_count for c in clocks if c is not None]
    assert len(resets) == len(coses)
    assert resets[0] < resets[-1], "windows signed after the TPM came back show its reset"
