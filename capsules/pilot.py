"""One priority capsule end to end: SIMULATED plant -> agent -> signed proofs -> hub -> report.

``CapsuleScenario`` is what ``factoryops demo --capsule NAME`` runs in place of the pump: it
serves the capsule's simulator over Modbus, renders the agent's configuration from the
capsule (polls and windows scaled to the simulator's speed), builds the capsule's model on
simulated normal operation and evaluates its detectors on the simulated faults, and after
the run writes the report: the hub's facts, the detector evaluation, the feasibility Monte
Carlo and the narrative, every sentence linked to its evidence.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.config import AgentConfig, parse_config
from agent.inference import OnnxScorer
from attestation.durable import write_atomically
from capsules.detect import EVALUATION_SEEDS, evaluate, train_model
from capsules.feasibility import monte_carlo
from capsules.narrative import HubEvidence, gather_facts, narrate
from capsules.render import Endpoints, render_agent_toml
from capsules.report import build_report, write_report
from capsules.sims.serve import CapsulePlant
from capsules.spec import Capsule, FaultSpec
from hil_tests.schedule import ScheduledFault, plant_now

__all__ = ["CapsuleScenario"]

log = logging.getLogger(__name__)


@dataclass
class CapsuleScenario:
    capsule: Capsule
    started: dt.datetime | None = None

    @property
    def speed(self) -> float:
        return self.capsule.simulator.demo_speed

    @property
    def sample_dt(self) -> float:
        """Plant seconds between two polls of the fastest signal: one model row."""
        return 1.0 / max(s.sample_hz for s in self.capsule.signals)

    def default_duration(self) -> float:
        """Wall seconds that show every scheduled fault, plus a margin."""
        faults = self.capsule.simulator.faults
        horizon = max((f.start_s + f.duration_s for f in faults), default=60.0)
        return horizon / self.speed + 10.0

    def plant(self) -> CapsulePlant:
        self.started = dt.datetime.now(dt.UTC).replace(microsecond=0)
        return CapsulePlant(self.capsule, speed=self.speed)

    def describe(self, plant: CapsulePlant) -> str:
        return f"capsule {self.capsule.name}: {plant.describe()}"

    def schedule_lines(self) -> list[str]:
        return [
            f"  at {f.start_s:,.0f} s {_fault_words(f)} for "
            f"{f.duration_s:,.0f} s" + (f": {f.description}" if f.description else "")
            for f in self.capsule.simulator.faults
        ]

    def plant_now(self, plant: CapsulePlant) -> str:
        schedule = [
            ScheduledFault(f.start_s, f.duration_s, _fault_words(f))
            for f in self.capsule.simulator.faults
        ]
        return plant_now(schedule, plant.feed.sample.t_s)

    def _dir(self, workdir: Path, kind: str) -> Path:
        # keyed by the capsule's digest: a changed capsule never reuses a stale model
        return workdir / kind / f"{self.capsule.name}-{self.capsule.digest[:12]}"

    def agent_config(self, workdir: Path, hub_url: str, port: int) -> AgentConfig:
        cap = self.capsule
        where = Endpoints(
            hub_url=hub_url,
            device_name=f"{cap.name}-demo",
            signer="software",  # the demo's identity step picks the key (TPM when it can)
            model_manifest=str(self._dir(workdir, "models") / f"{cap.name}.int8.manifest.json"),
            connectors={c.name: f"127.0.0.1:{port}" for c in cap.connectors},
            time_scale=self.speed,
        )
        path = workdir / "agent" / f"{cap.name}.agent.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render_agent_toml(cap, where)
        write_atomically(path, text.encode())
        return parse_config(text, str(path), base_dir=path.parent)

    def scorer(self, workdir: Path, console: Console) -> OnnxScorer:
        cap = self.capsule
        out = self._dir(workdir, "models")
        manifest = out / f"{cap.name}.int8.manifest.json"
        if not manifest.exists():
            console.print(
                f"[bold]model[/bold] training the {cap.model.family} recipe on "
                f"{cap.model.train_rows:,} rows of SIMULATED normal operation…"
            )
            train_model(cap, out, self.sample_dt)
        evaluation = out / "evaluation.json"
        if not evaluation.exists():
            console.print(
                f"[bold]detectors[/bold] evaluating on the simulated faults "
                f"({len(EVALUATION_SEEDS)} seeds)…"
            )
            ev = evaluate(cap, manifest, self.sample_dt, EVALUATION_SEEDS)
            write_atomically(evaluation, (json.dumps(ev.as_json(), indent=2) + "\n").encode())
        scorer = OnnxScorer.open(manifest)
        console.print(
            f"[bold]model[/bold] {scorer.model.manifest.id} ({cap.model.family}) int8 ONNX, "
            f"sha256 {scorer.model.manifest.sha256[:16]}…"
        )
        return scorer

    def finish(self, hub_url: str, utid: str, workdir: Path, console: Console) -> int:
        cap = self.capsule
        start = self.started or dt.datetime.now(dt.UTC)
        end = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
        out = workdir / "reports" / cap.name
        out.mkdir(parents=True, exist_ok=True)
        evaluation: dict[str, Any] = json.loads(
            (self._dir(workdir, "models") / "evaluation.json").read_text(encoding="utf-8")
        )
        either = evaluation["detectors"]["either"]
        outcomes = {
            "detection_rate": either["detection_rate_by_seed"],
            "false_alarms_per_h": either["false_alarms_by_seed"],
        }
        feasibility = monte_carlo(cap.feasibility, outcomes, seed=cap.simulator.seed).as_json()
        write_atomically(
            out / "feasibility.json", (json.dumps(feasibility, indent=2) + "\n").encode()
        )
        hub = HubEvidence(hub_url)
        facts = gather_facts(
            hub,
            cap,
            utid,
            start.isoformat(),
            end.isoformat(),
            ("feasibility.json", feasibility),
        )
        sentences, omitted = narrate(cap, facts)
        report = build_report(
            cap,
            hub_url=hub_url,
            utid=utid,
            facts=facts,
            sentences=sentences,
            omitted=omitted,
            evaluation=evaluation,
            feasibility=feasibility,
            simulated=True,
        )
        j, m = write_report(report, out)
        console.print(f"\n[bold]report[/bold] {m}  (facts: {j})")
        for s in sentences:
            console.print(f"  • {s.text}", highlight=False)
        return 0


def _fault_words(f: FaultSpec) -> str:
    """A scheduled fault as the demo says it: its kind, and the signal it acts on if any."""
    return f"{f.kind} on {f.signal}" if f.signal else f.kind
