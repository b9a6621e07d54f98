"""``factoryops demo``: a SIMULATED pump plant, the edge agent and the hub, all on 127.0.0.1.

Shows live counts; on exit writes the receipt of a sample reading to WORKDIR/receipts/
and prints the exact ``factoryops verify`` command that checks it offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.cli import make_signer
from agent.config import AgentConfig, load_config
from agent.inference import OnnxScorer
from agent.runtime import build_runtime
from agent.update_loop import update_loop
from agent.updates import UpdateResult
from agent.uplink import register_device
from attestation.errors import Fixable
from attestation.signers.base import Signer
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from factoryops.fleet import CHECK_EVERY_S, prepare_fleet, trust_fleet_root
from hil_tests.modbus_server import PlantServer, agent_modbus_section
from hil_tests.plant import DEFAULT_FAULTS, PLANT_FAULTS, Fault, FaultKind, PumpParams
from hil_tests.schedule import ScheduledFault, plant_now
from hil_tests.training import simulated_normal
from models_onnx.recipes import Recipe, build
from provisioning.swtpm import EkCa, SwtpmProcess, manufacture, swtpm_available

__all__ = ["demo"]

log = logging.getLogger(__name__)


def _agent_config(
    workdir: Path, hub_url: str, modbus_port: int, update_every_s: int = CHECK_EVERY_S
) -> AgentConfig:
    text = "\n".join(
        [
            "[device]",
            'name = "demo-gateway"',
            'signer = "software"',
            'key_file = "device.key"',
            "",
            "[hub]",
            f'url = "{hub_url}"',
            "",
            "[window]",
            "max_readings = 400",
            "max_ms = 1000",
            "",
            "[spool]",
            'path = "spool.db"',
            "",
            "[model]",  # watched: a fleet update (TUF) swaps it (factoryops fleet run)
            'manifest = "models/active.manifest.json"',
            "",
            "[updates]",  # the agent's update task: models and the tuned scoring settings
            'family = "autoencoder"',
            'channel = "fleet"',
            'config_site = "demo"',
            'fragments = ["scoring"]',
            f"interval_s = {update_every_s}",
            f"probation_s = {2 * update_every_s}",
            "",
            agent_modbus_section("127.0.0.1", modbus_port, poll_interval_ms=100),
        ]
    )
    path = workdir / "agent" / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load_config(path)  # with the signed fragments a rerun installed before


def _tpm_identity(
    workdir: Path, hub: HubServer, name: str, console: Console
) -> tuple[Signer, SwtpmProcess, str]:
    """Make a SIMULATED TPM (EK certificate from a local maker CA), enroll it, open its key.

    The hub trusts that local maker CA (copied into its ek-ca/ folder), exactly as a real
    hub trusts a real TPM maker's CA. Reruns reuse the TPM and skip the enrollment.
    """
    from attestation.signers.tpm import TpmSigner  # noqa: PLC0415 - the tpm extra
    from provisioning.enroll import enroll  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from provisioning.tpm_identity import TpmIdentity  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    state, ca = workdir / "swtpm", EkCa(workdir / "tpm-maker")
    if not (state / "tpm2-00.permall").exists():
        manufacture(state, ca)
    trusted = hub.settings.data_dir / "ek-ca"
    trusted.mkdir(parents=True, exist_ok=True)
    for cert in ca.cert_paths:
        shutil.copy(cert, trusted / cert.name)
    tpm = SwtpmProcess(state).start()
    try:
        r = httpx.post(
            f"{hub.url}/v1/enrollment-tokens",
            json={"site": "demo"},
            headers={"authorization": f"Bearer {hub.settings.admin_token}"},
            timeout=10,
        )
        r.raise_for_status()
        with TpmIdentity(tpm.tcti) as identity:
            done, _ = enroll(
                identity,
                hub.url,
                str(r.json()["token"]),
                name=name,
                state_dir=workdir / "agent",
                progress=lambda step: console.print(f"  enrollment: {step}"),
            )
        signer = TpmSigner.open(tpm.tcti, create=False)
    except BaseException:
        tpm.stop()
        raise
    console.print(
        f"[bold]signing key[/bold] P-256 key in a SIMULATED TPM (swtpm, {tpm.tcti}, "
        f"handle {signer.handle:#x}), enrolled with EK certificate, AK activation, "
        "Certify and a PCR quote"
    )
    return signer, tpm, done.utid


def _identity(
    workdir: Path, cfg: AgentConfig, hub: HubServer, console: Console
) -> tuple[Signer, SwtpmProcess | None, str]:
    """An enrolled swtpm key when swtpm is installed, else a registered software key."""
    if swtpm_available():
        try:
            return _tpm_identity(workdir, hub, cfg.device.name, console)
        except (ImportError, Fixable) as err:
            console.print(
                f"[yellow]swtpm is installed but unusable ({err}); "
                "falling back to a software key[/yellow]"
            )
    else:
        console.print(
            "[yellow]swtpm is not installed (apt install swtpm swtpm-tools): falling back "
            "to a software key[/yellow]"
        )
    console.print(
        f"[yellow]signing key: software P-256 key ({cfg.device.key_file}) — "
        "development only, not a TPM[/yellow]"
    )
    signer = make_signer(cfg.device)
    utid = register_device(
        hub.url, hub.settings.admin_token, signer, name=cfg.device.name, state_dir=workdir / "agent"
    )
    return signer, None, utid


def _demo_scorer(workdir: Path, console: Console) -> OnnxScorer:
    """The demo's own model: a shadow twin trained on the simulator's normal operation (cached).

    The twin predicts each signal from the others and the last three rows; its residuals,
    beside a level (T2) term, are the anomaly score (the recipe the nested evaluation picks on
    SKAB, docs/models.md). The fp32 file is loaded: int8 does not pay for a model this small
    (docs/adr/0019-int8-or-fp32-on-the-gateway.md).
    """
    cache = workdir / "models"
    manifest = cache / "pump-twin.fp32.manifest.json"
    if not manifest.exists():
        console.print(
            "[bold]model[/bold] training a shadow twin on 10 simulated minutes of "
            "normal operation (first run only)…"
        )
        signals, x = simulated_normal(600)
        build(Recipe(), x, signals, cache, model_id="pump-twin")
    active = workdir / "agent" / "models" / "active.manifest.json"
    if not active.exists():  # a fleet update makes it a symlink; a rerun keeps the last good
        active.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        shutil.copy(cache / doc["onnx_file"], active.parent / doc["onnx_file"])
        shutil.copy(manifest, active)
    scorer = OnnxScorer.open(active)
    m = scorer.model.manifest
    console.print(
        f"[bold]model[/bold] {m.id} {'int8' if m.quantized else 'fp32'} ONNX, "
        f"sha256 {m.sha256[:16]}… "
        "(its hash goes into every micro-proof)"
    )
    return scorer


# What each scheduled fault does to the simulated pump, in the words a plant engineer uses.
_FAULT_WORDS = {
    FaultKind.VALVE_CLOSING: "the discharge valve starts closing",
    FaultKind.CAVITATION: "the suction side starves (cavitation)",
    FaultKind.BEARING_WEAR: "a bearing starts to wear",
    FaultKind.SENSOR_STUCK: "the {signal} sensor freezes",
    FaultKind.SENSOR_SPIKE: "the {signal} sensor spikes",
    FaultKind.SENSOR_DRIFT: "the {signal} sensor drifts",
}


def _fault_words(f: Fault) -> str:
    return _FAULT_WORDS[f.kind].format(signal=f.signal)


def _schedule_lines(faults: tuple[Fault, ...]) -> list[str]:
    """The simulated plant's fault schedule, one line a fault, so anomalies are expected."""
    return [
        f"  at {f.start_s:,.0f} s {_fault_words(f)} for {f.duration_s:,.0f} s"
        + (" (plant fault)" if f.kind in PLANT_FAULTS else " (sensor fault)")
        for f in faults
    ]


# The demo's twin flags a motor housing warmer than the pump's state explains down to ~0.3 °C
# (1.5x the Temperature sensor's noise). After the bearing-wear fault (+12 °C) ends, the housing
# cools with a 2-minute lag: scored over the schedule (seeds 11 and 3), the model's last
# alarming windows came at 0.26-0.29 °C above steady, ~500 s after the fault (docs/plant.md;
# tests/integration/test_demo.py holds the line and the model to it). Below it: settled.
SETTLED_C = 0.3


def _plant_now(
    faults: tuple[Fault, ...],
    elapsed: float,
    housing_excess_c: float = 0.0,
    housing_tau_s: float = PumpParams().housing_tau_s,
) -> str:
    """What the simulated plant is doing now, and whether anomalies are expected: during a
    fault, and after one while the motor housing it heated is still cooling back."""
    recovering = ""
    if housing_excess_c > SETTLED_C:
        recovering = (
            f"recovering: the motor housing is {housing_excess_c:.1f} °C above its steady"
            f" temperature and cooling (a {housing_tau_s / 60:.0f}-minute lag), expect"
            " anomalies until it settles"
        )
    schedule = [ScheduledFault(f.start_s, f.duration_s, _fault_words(f)) for f in faults]
    return plant_now(schedule, elapsed, recovering)


def _status_table(
    hub_url: str,
    status: dict[str, Any],
    elapsed: float,
    plant_s: float = 0.0,
    plant_now: str | None = None,
) -> Table:
    t = Table(title=f"FactoryOps demo — hub {hub_url}  ({elapsed:,.0f} s)", show_header=False)
    if plant_now is not None:
        t.add_row(f"simulated plant at {plant_s:,.0f} s", plant_now)
    t.add_row("readings acquired", f"{status['readings']:,}")
    t.add_row("readings committed (signed windows)", f"{status['committed']:,}")
    t.add_row("windows signed", f"{status['windows_signed']:,}")
    t.add_row("proofs synced to the hub", f"{status['proofs_synced']:,}")
    t.add_row("gap records", f"{status['gap_records']:,}")
    t.add_row("anomalous rows (model score > 1)", f"{status['anomalous_rows']:,}")
    score = status["last_max_score"]
    t.add_row(
        "max anomaly score, last window",
        f"{score:.2f} (limit 1.00)" if isinstance(score, float) else str(score),
    )
    return t


class Scenario(Protocol):
    """What runs behind the agent: the pump (default) or a capsule's plant (capsules.pilot)."""

    def plant(self) -> contextlib.AbstractAsyncContextManager[Any]: ...

    def describe(self, plant: Any) -> str: ...

    def schedule_lines(self) -> list[str]: ...

    def plant_now(self, plant: Any) -> str | None: ...

    def agent_config(self, workdir: Path, hub_url: str, port: int) -> AgentConfig: ...

    def scorer(self, workdir: Path, console: Console) -> OnnxScorer: ...

    def finish(self, hub_url: str, utid: str, workdir: Path, console: Console) -> int: ...


@dataclass
class PumpScenario:
    replay: Path | None = None
    update_every_s: int = CHECK_EVERY_S  # how often the agent asks the hub for updates

    @property
    def faults(self) -> tuple[Fault, ...]:
        return () if self.replay else DEFAULT_FAULTS

    def plant(self) -> PlantServer:
        return PlantServer(replay=self.replay, period_s=0.1)

    def describe(self, plant: Any) -> str:
        return f"replaying {self.replay}" if self.replay else "SIMULATED pump (physics model)"

    def schedule_lines(self) -> list[str]:
        return _schedule_lines(self.faults)

    def plant_now(self, plant: PlantServer) -> str | None:
        if not self.faults:
            return None
        plant_s, pump = plant.feed.sample.t_s, plant.pump
        if pump is None:
            return _plant_now(self.faults, plant_s)
        return _plant_now(self.faults, plant_s, pump.housing_excess_c, pump.params.housing_tau_s)

    def agent_config(self, workdir: Path, hub_url: str, port: int) -> AgentConfig:
        return _agent_config(workdir, hub_url, port, self.update_every_s)

    def scorer(self, workdir: Path, console: Console) -> OnnxScorer:
        return _demo_scorer(workdir, console)

    def finish(self, hub_url: str, utid: str, workdir: Path, console: Console) -> int:
        return 0


async def _run(  # noqa: PLR0915 - the demo's script: start, narrate, stop, in order
    workdir: Path, duration: float | None, scenario: Scenario, port: int, console: Console
) -> int:
    # a local demo: reads are open (no login); a real hub needs operators (docs/hub.md)
    settings = HubSettings.create(
        workdir / "hub", allow_software_keys=True, open_reads=True, plain_http=True
    )
    hub = HubServer(settings, port=port)
    tpm: SwtpmProcess | None = None
    await asyncio.to_thread(hub.start)
    console.print(f"[bold]hub[/bold] {hub.url}  (web view: {hub.url}/)")
    root = await asyncio.to_thread(prepare_fleet, settings.data_dir, workdir, datasets=False)
    (settings.data_dir / "url").write_text(hub.url, encoding="utf-8")  # for `fleet run`
    console.print(
        f"[bold]fleet[/bold] TUF repository ready; run `factoryops fleet run --workdir {workdir}`"
        " to merge, tune and ship a model to this gateway"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with scenario.plant() as plant:
            what = scenario.describe(plant)
            console.print(f"[bold]plant[/bold] Modbus TCP 127.0.0.1:{plant.port} — {what}")
            schedule = scenario.schedule_lines()
            if schedule:
                console.print("[bold]fault schedule[/bold] (plant seconds since it started):")
                for line in schedule:
                    console.print(line, highlight=False)
            cfg = scenario.agent_config(workdir, hub.url, plant.port)
            signer, tpm, utid = await asyncio.to_thread(_identity, workdir, cfg, hub, console)
            console.print(f"[bold]gateway[/bold] {utid}")
            scorer = await asyncio.to_thread(scenario.scorer, workdir, console)

            def table(elapsed: float) -> Table:
                plant_s = plant.feed.sample.t_s
                return _status_table(
                    hub.url, runtime.status(), elapsed, plant_s, scenario.plant_now(plant)
                )

            scorer.retune(cfg.scoring)  # a tuned limit a signed fragment set before
            trust_fleet_root(cfg, root)
            updates = update_loop(cfg, workdir / "agent" / "agent.toml", scorer)
            if updates is not None:
                updates.on_result = lambda r: _update_line(r, console)
            runtime = build_runtime(cfg, signer, scorer=scorer, updates=updates)
            task = asyncio.create_task(runtime.run(stop), name="agent")
            started = time.monotonic()
            with Live(console=console, refresh_per_second=2) as live:
                while not stop.is_set():
                    elapsed = time.monotonic() - started
                    live.update(table(elapsed))
                    if duration is not None and elapsed >= duration:
                        stop.set()
                        break
                    with_timeout = asyncio.create_task(stop.wait())
                    await asyncio.wait(
                        [with_timeout, task], timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                    )
                    with_timeout.cancel()
                    if task.done():
                        break
                await task
                live.update(table(time.monotonic() - started))
            stop.set()  # the agent may have ended on its own
        rc = await asyncio.to_thread(_write_receipt, hub, utid, workdir, console)
        if rc == 0:
            rc = await asyncio.to_thread(scenario.finish, hub.url, utid, workdir, console)
        return rc
    finally:
        await asyncio.to_thread(hub.stop)
        if tpm is not None:
            tpm.stop()


def _update_line(result: UpdateResult, console: Console) -> None:
    colour = "green" if result.outcome == "installed" else "yellow"
    console.print(f"[{colour}]fleet update[/{colour}] {result.outcome}: {result.detail}")


def _write_receipt(hub: HubServer, utid: str, workdir: Path, console: Console) -> int:
    device = httpx.get(f"{hub.url}/v1/devices/{utid}", timeout=10).json()
    last = int(device["last_seq"])
    if last < 0:
        console.print("[red]no reading reached the hub; nothing to show a receipt for[/red]")
        return 1
    seq = last // 2
    r = httpx.get(f"{hub.url}/v1/devices/{utid}/readings/{seq}/receipt", timeout=10)
    r.raise_for_status()
    out = workdir / "receipts" / f"reading-{seq}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r.json(), indent=2) + "\n", encoding="utf-8")
    ca = workdir / "hub" / "fleet-ca.pem"
    hub_key = workdir / "hub" / "hub-log-key.pem"
    console.print(f"\nreceipt of reading seq {seq:,}: {_shown(out)}")
    console.print("check it offline with:\n")
    command = [*_factoryops_command(), "verify", _shown(out), "--trust", _shown(ca)]
    command += ["--trust", _shown(hub_key)]
    console.print(f"  {shlex.join(command)}\n", highlight=False, soft_wrap=True)
    return 0


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _factoryops_command() -> list[str]:
    """How to run ``factoryops`` from the user's shell. A program inside the working
    directory (``.venv/bin/factoryops`` in a fresh clone) is named by that path even when
    PATH finds it: ``make demo`` runs under ``uv run``, which puts the venv on the PATH of
    its child only, not of the shell the user pastes into."""
    me = Path(sys.argv[0])
    if me.name != "factoryops" or not me.exists():
        return [_shown(Path(sys.executable)), "-m", "factoryops"]
    shown = _shown(me)
    if not Path(shown).is_absolute():
        return [shown if os.sep in shown else f".{os.sep}{shown}"]
    on_path = shutil.which("factoryops")
    return ["factoryops"] if on_path and Path(on_path).resolve() == me.resolve() else [shown]


@click.command()
@click.option(
    "--duration", type=float, default=None, help="Stop after S seconds (default: run until Ctrl-C)."
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-work"),
    show_default=True,
    help="Where the hub database, spool, keys and receipts go (reused across runs).",
)
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve a SKAB-format CSV instead of the physics model.",
)
@click.option(
    "--port", type=int, default=0, show_default=True, help="Hub port (0 picks a free one)."
)
@click.option(
    "--capsule",
    "capsule_name",
    default=None,
    help="Run a capsule's SIMULATED plant instead of the pump and write its report "
    "(any Modbus capsule; the priority ones have physics or process models).",
)
@click.option(
    "--update-every",
    type=click.IntRange(1, 86_400),
    default=CHECK_EVERY_S,
    show_default=True,
    help="Seconds between the agent's checks for signed updates (`factoryops fleet run`).",
)
def demo(
    duration: float | None,
    workdir: Path,
    replay: Path | None,
    port: int,
    capsule_name: str | None,
    update_every: int,
) -> None:
    """Run a simulated plant, the agent and the hub locally; print a verifiable receipt.

    \b
    Examples:
      factoryops demo                          # until Ctrl-C
      factoryops demo --duration 30 --workdir /tmp/fo
      factoryops demo --replay ../shared/datasets/skab/valve1/0.csv
      factoryops demo --capsule permanent-magnets   # plant, agent, hub, report
    """
    console = Console()
    workdir = workdir.resolve()
    scenario: Scenario = PumpScenario(replay, update_every)
    if capsule_name is not None:
        from capsules.catalogue import find  # noqa: PLC0415 - only for --capsule
        from capsules.pilot import CapsuleScenario  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        pilot = CapsuleScenario(find(capsule_name))
        scenario, workdir = pilot, workdir / "capsules" / capsule_name  # own hub, TPM, spool
        duration = pilot.default_duration() if duration is None else duration
    rc = asyncio.run(_run(workdir, duration, scenario, port, console))
    raise SystemExit(rc)
