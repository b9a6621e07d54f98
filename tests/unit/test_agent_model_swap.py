"""A running agent swaps its model when the manifest changes; a bad model is refused and
the previous one keeps scoring. Every micro-proof names the model that scored it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent.config import parse_config
from agent.connectors.base import Emit, Sample
from agent.inference import OnnxScorer
from agent.runtime import build_runtime
from attestation import parse_microproof
from attestation.signers.software import SoftwareSigner
from hil_tests.training import simulated_normal
from models_onnx.recipes import build_pca
from tests.waiting import until


@dataclass
class PlantRows:
    """Emits rows of the model's own signals (values from the simulated plant)."""

    signals: tuple[str, ...]
    rows: list[list[float]]
    name: str = "plant"

    async def run(self, emit: Emit) -> None:
        i = 0
        while True:
            now = time.time_ns()
            row = self.rows[i % len(self.rows)]
            await emit([Sample(s, v, "", now) for s, v in zip(self.signals, row, strict=True)])
            i += 1
            await asyncio.sleep(0.005)


def _replace(src: Path, dst: Path) -> None:
    """How a model is deployed: the manifest is written last, by rename."""
    tmp = dst.with_name(".incoming.json")
    shutil.copy(src, tmp)
    os.replace(tmp, dst)


def _models_in_proofs(spool: Path) -> list[str]:
    with sqlite3.connect(spool) as db:
        proofs = [b for (b,) in db.execute("SELECT cose FROM windows ORDER BY window")]
    return [m.id if (m := parse_microproof(p).proof.model) else "-" for p in proofs]


async def test_a_new_model_is_swapped_in_and_a_tampered_one_refused(tmp_path: Path) -> None:
    signals, x = simulated_normal(60)
    models = tmp_path / "models"
    _, a = build_pca(x, signals, models, model_id="a", smoothing_span=3)
    _, b = build_pca(x, signals, models, model_id="b", smoothing_span=3)
    active = models / "active.manifest.json"
    _replace(a, active)
    cfg = parse_config(
        '[device]\nname = "gw"\n[window]\nmax_readings = 80\nmax_ms = 50\n'
        f'[model]\nmanifest = "{active}"\n'
        '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
        "address = 0\n",
        str(tmp_path / "a.toml"),
        base_dir=tmp_path,
    )
    source = PlantRows(tuple(signals), x[:200].tolist())
    runtime = build_runtime(
        cfg,
        SoftwareSigner.generate(),
        [source],
        scorer=OnnxScorer.open(active),
        model_reload_s=0.05,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await until(lambda: runtime.counters.windows_signed >= 3)
    _replace(b, active)
    await until(lambda: runtime.counters.model_swaps == 1)
    signed = runtime.counters.windows_signed
    await until(lambda: runtime.counters.windows_signed >= signed + 3)

    tampered = json.loads(b.read_text())
    tampered["sha256"] = "00" * 32  # a manifest whose hash does not match its ONNX file
    bad = models / "bad.manifest.json"
    bad.write_text(json.dumps(tampered))
    _replace(bad, active)
    await until(lambda: runtime.counters.model_swap_failures == 1)
    signed = runtime.counters.windows_signed
    await until(lambda: runtime.counters.windows_signed >= signed + 3)
    stop.set()
    await task

    assert "hash" in str(runtime.status()["model_error"]).lower()
    used = _models_in_proofs(cfg.spool.path)
    first_b = used.index("b")
    assert set(used[:first_b]) == {"a"} and set(used[first_b:]) == {"b"}  # b kept running
    assert runtime.counters.readings_committed == runtime.counters.readings_acquired
