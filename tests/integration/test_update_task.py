"""The update client as a task of a running agent, against a real hub: a signed model and a
signed configuration fragment are fetched, checked and applied while the agent keeps
acquiring; the next micro-proofs name the fleet model and carry the new alarm limit; bad
fragments are refused; a hub that goes away costs checks (backing off), never windows.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.health import HealthLimits, read_status, render_status
from agent.inference import OnnxScorer
from agent.runtime import AgentRuntime, build_runtime
from agent.update_loop import UpdateLoop, update_loop
from agent.updates import install_trusted_root
from agent.uplink import register_device
from attestation import parse_microproof
from attestation.microproof import MicroProof
from attestation.signers.software import SoftwareSigner
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from cloud_sync.updates import TufRepository, init_repository, publish_config, publish_model
from hil_tests.training import simulated_normal
from models_onnx.manifest import load_model
from models_onnx.recipes import build_pca
from tests.unit.test_agent_model_swap import PlantRows
from tests.waiting import until

FAMILY = "pca_t2_q"


@dataclass
class Site:
    hub: HubServer
    repo: TufRepository
    config_path: Path
    cfg: AgentConfig
    signals: list[str]
    rows: list[list[float]]

    def agent(self) -> tuple[AgentRuntime, UpdateLoop]:
        signer = SoftwareSigner.load_or_create(self.cfg.device.key_file)
        scorer = OnnxScorer.open(self.cfg.model_manifest or Path(), self.cfg.scoring)
        loop = update_loop(self.cfg, self.config_path, scorer)
        assert loop is not None
        source = PlantRows(tuple(self.signals), self.rows)
        runtime = build_runtime(
            self.cfg, signer, [source], scorer=scorer, updates=loop, model_reload_s=0.05
        )
        return runtime, loop


def _proofs(spool: Path) -> list[MicroProof]:
    with sqlite3.connect(spool) as db:
        rows = db.execute("SELECT cose FROM windows ORDER BY window").fetchall()
    return [parse_microproof(b).proof for (b,) in rows]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True)
    data = settings.data_dir
    root = init_repository(data / "tuf", tmp_path / "offline", data / "tuf-keys")
    repo = TufRepository.open(data / "tuf", data / "tuf-keys")
    signals, x = simulated_normal(60, seed=3)
    gateway = tmp_path / "gateway"
    _, first = build_pca(x, signals, gateway / "models", model_id="factory")
    with HubServer(settings) as hub:
        path = gateway / "agent.toml"
        path.write_text(
            f'[device]\nname = "gw"\nkey_file = "device.key"\n[hub]\nurl = "{hub.url}"\n'
            "[window]\nmax_readings = 80\nmax_ms = 50\n"
            f'[model]\nmanifest = "{first}"\n'
            f'[updates]\nfamily = "{FAMILY}"\nchannel = "fleet"\nconfig_site = "plant-1"\n'
            'fragments = ["scoring"]\ninterval_s = 1\nprobation_s = 1\n'
            "[log]\nstatus_interval_s = 1\n"
            '[[modbus]]\nname = "unused"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\n'
            "address = 0\n",
            encoding="utf-8",
        )
        cfg = load_config(path)
        signer = SoftwareSigner.load_or_create(cfg.device.key_file)
        register_device(hub.url, settings.admin_token, signer, name="gw", state_dir=gateway)
        channel = cfg.spool.path.parent / "updates" / FAMILY / "fleet"
        install_trusted_root(channel, root.read_bytes())
        yield Site(hub, repo, path, cfg, list(signals), x[:200].tolist())


async def test_the_running_agent_takes_a_signed_model_and_fragment_and_keeps_acquiring(
    site: Site, tmp_path: Path
) -> None:
    signals, x = simulated_normal(60, seed=3)
    _, merged = build_pca(x, signals, tmp_path / "fleet", model_id="merged")
    publish_model(site.repo, merged, family=FAMILY, site="fleet", job_id=7)
    publish_config(
        site.repo, "[model]\nthreshold_factor = 1.25\n", site="plant-1", name="scoring", job_id=8
    )
    runtime, loop = site.agent()
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    fragments = loop.fragments
    assert fragments is not None
    await until(lambda: runtime.counters.model_swaps == 1, what="the fleet model swapped in")
    await until(
        lambda: fragments.state().applied == {"scoring": 1} and fragments.state().trial is None,
        what="the fragment applied and confirmed after its probation",
    )
    signed = runtime.counters.windows_signed
    await until(lambda: runtime.counters.windows_signed >= signed + 3, what="windows after it")

    site.hub.stop()  # the hub goes away: checks fail and back off, acquisition goes on
    signed, failed = runtime.counters.windows_signed, loop.failures
    await until(lambda: loop.failures >= failed + 2, what="two failed checks")
    await until(lambda: runtime.counters.windows_signed >= signed + 5, what="windows meanwhile")
    doc, verdict = read_status(runtime.status_path, loop.clock(), HealthLimits())
    stop.set()
    await task

    proofs = _proofs(site.cfg.spool.path)
    limit = load_model(merged).manifest.threshold * 1.25
    last = proofs[-1]
    assert last.model is not None and (last.model.fleet_version, last.model.job) == (1, 7)
    assert last.anomaly is not None and last.anomaly.threshold == pytest.approx(limit)
    assert proofs[0].model is not None and proofs[0].model.id == "factory"
    assert doc is not None and doc["updates"]["running"] == 1
    lines = "\n".join(render_status(doc, verdict, loop.clock()))
    assert "running v1" in lines and "scoring v1" in lines, lines
    assert runtime.counters.readings_committed == runtime.counters.readings_acquired
    # a restart keeps both: the symlink and the installed fragment
    again = load_config(site.config_path)
    assert again.scoring.threshold_factor == 1.25 and again.fragments


async def test_fragments_the_config_rules_or_the_health_check_refuse_change_nothing(
    site: Site,
) -> None:
    runtime, loop = site.agent()
    fragments = loop.fragments
    assert fragments is not None
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await until(lambda: runtime.counters.windows_signed >= 5, what="windows signed")
    publish_config(site.repo, '[hub]\nurl = "http://evil"\n', site="plant-1", name="scoring",
                   job_id=None)  # fmt: skip
    await until(lambda: fragments.state().rejected.get("scoring") == [1], what="v1 refused")
    assert "a fragment may set only model tables" in fragments.state().last
    # every row alarms at a limit 0.1 times the model's: the health check refuses it
    publish_config(site.repo, "[model]\nthreshold_factor = 0.1\n", site="plant-1",
                   name="scoring", job_id=None)  # fmt: skip
    await until(lambda: 2 in fragments.state().rejected.get("scoring", []), what="v2 refused")
    assert "alarms on 100% of the recent rows" in fragments.state().last
    stop.set()
    await task
    assert fragments.state().applied == {}
    assert not (fragments.dir / "active" / "scoring.toml").exists()
    assert load_config(site.config_path).scoring.threshold_factor == 1.0
    assert {p.anomaly.threshold for p in _proofs(site.cfg.spool.path) if p.anomaly} == {
        load_model(site.cfg.model_manifest or Path()).manifest.threshold
    }
