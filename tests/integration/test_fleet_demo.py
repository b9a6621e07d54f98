"""The demo's fleet path as the README documents it: `factoryops demo` in one process,
`factoryops fleet run --workdir ...` in another; the demo agent's update task installs the
merged model and the tuned scoring fragment, and its next micro-proofs say so.

Kept quick: two sites, two generations, a few trials (the figures of a full run are in
docs/fleet.md); the path through jobs, TUF, the agent's task and the proofs is the whole one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from attestation import parse_microproof
from models_onnx.manifest import load_model
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "factoryops"


def _status(work: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((work / "agent" / "agent-status.json").read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return {}
    return doc


def _took_both(work: Path) -> bool:
    up = _status(work).get("updates") or {}
    cfg = up.get("config") or {}
    return up.get("running") == 1 and cfg.get("applied") == {"scoring": 1} and not cfg["trial"]


async def test_fleet_run_ships_a_model_and_a_tuned_limit_to_the_demo_agent(
    tmp_path: Path,
) -> None:
    work = tmp_path / "demo-work"
    env = dict(os.environ, COLUMNS="400")
    log = tmp_path / "demo.log"
    with log.open("wb") as sink:  # a file, not a pipe: the demo's live table never blocks
        demo = await asyncio.create_subprocess_exec(
            str(SCRIPT), "demo", "--workdir", str(work), "--update-every", "1",
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        await until(lambda: (work / "hub" / "url").exists() and bool(_status(work)),
                    within_s=180, what="the demo's hub and agent up")  # fmt: skip
        fleet = await asyncio.create_subprocess_exec(
            str(SCRIPT), "fleet", "run", "--workdir", str(work), "--site", "pump-b",
            "--generations", "2", "--trials", "12",
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        said = (await asyncio.wait_for(fleet.communicate(), 600))[0].decode()
        (tmp_path / "fleet.log").write_text(said)
        assert fleet.returncode == 0, said[-3000:]
        assert "published autoencoder/fleet version 1" in said, said
        assert "published config/demo/scoring.toml version 1" in said, said
        await until(lambda: _took_both(work), within_s=120, what="model and fragment taken")
        windows = _status(work)["windows_signed"]
        await until(lambda: _status(work)["windows_signed"] >= windows + 3, what="new windows")
    finally:
        demo.send_signal(signal.SIGINT)
        await asyncio.wait_for(demo.wait(), 120)
    out = log.read_text(errors="replace")
    assert demo.returncode == 0, out[-3000:]
    assert "fleet update installed: version 1 is scoring" in out, out[-3000:]
    assert "fleet update confirmed: scoring version 1 confirmed" in out, out[-3000:]

    agent = work / "agent"
    factor = tomllib.loads((agent / "updates/config/active/scoring.toml").read_text())["model"]
    merged = load_model(agent / "models" / "active.manifest.json").manifest
    with sqlite3.connect(agent / "spool.db") as db:
        (last,) = db.execute("SELECT cose FROM windows ORDER BY window DESC LIMIT 1").fetchone()
    proof = parse_microproof(last).proof
    assert proof.model is not None and proof.anomaly is not None
    assert (proof.model.id, proof.model.fleet_version, proof.model.job) == (merged.id, 1, 1)
    assert proof.anomaly.threshold == merged.threshold * factor["threshold_factor"]
