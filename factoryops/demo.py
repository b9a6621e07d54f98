"""``factoryops demo``: a SIMULATED pump plant, the edge agent and the hub, all on 127.0.0.1.

Shows live counts; on exit writes the receipt of a sample reading to WORKDIR/receipts/
and prints the exact ``factoryops verify`` command that checks it offline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.cli import make_signer
from agent.config import AgentConfig, parse_config
from agent.inference import OnnxScorer
from agent.runtime import AgentRuntime, connectors_from_config
from agent.uplink import register_device
from attestation.errors import Fixable
from attestation.signers.base import Signer
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings
from hil_tests.modbus_server import PlantServer, agent_modbus_section
from hil_tests.training import simulated_normal
from models_onnx.recipes import Recipe, build
from provisioning.swtpm import EkCa, SwtpmProcess, manufacture, swtpm_available

__all__ = ["demo"]

log = logging.getLogger(__name__)


def _agent_config(workdir: Path, hub_url: str, modbus_port: int) -> AgentConfig:
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
            agent_modbus_section("127.0.0.1", modbus_port, poll_interval_ms=100),
        ]
    )
    path = workdir / "agent" / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return parse_config(text, str(path), base_dir=path.parent)


def _tpm_identity(
    workdir: Path, hub: HubServer, name: str, console: Console
) -> tuple[Signer, SwtpmProcess, str]:
    """Make a SIMULATED TPM (EK certificate from a local maker CA), enroll it, open its key.

    The hub trusts that local maker CA (copied into its ek-ca/ folder), exactly as a real
    hub trusts a real TPM maker's CA. Reruns reuse the TPM and skip the enrollment.
    """
    from attestation.signers.tpm import TpmSigner  # noqa: PLC0415 - the tpm extra
    from provisioning.enroll import enroll  # noqa: PLC0415
    from provisioning.tpm_identity import TpmIdentity  # noqa: PLC0415

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

    The twin predicts each signal from the others and the last two rows; its residuals are
    the anomaly score (the kind that did best on SKAB, docs/models.md).
    """
    cache = workdir / "models"
    manifest = cache / "pump-twin.int8.manifest.json"
    if not manifest.exists():
        console.print(
            "[bold]model[/bold] training a shadow twin on 10 simulated minutes of "
            "normal operation (first run only)…"
        )
        signals, x = simulated_normal(600)
        build(Recipe(kind="twin"), x, signals, cache, model_id="pump-twin")
    scorer = OnnxScorer.open(manifest)
    m = scorer.model.manifest
    console.print(
        f"[bold]model[/bold] {m.id} int8 ONNX, sha256 {m.sha256[:16]}… "
        "(its hash goes into every micro-proof)"
    )
    return scorer


def _status_table(hub_url: str, status: dict[str, Any], elapsed: float) -> Table:
    t = Table(title=f"FactoryOps demo — hub {hub_url}  ({elapsed:,.0f} s)", show_header=False)
    t.add_row("readings acquired", f"{status['readings']:,}")
    t.add_row("readings committed (signed windows)", f"{status['committed']:,}")
    t.add_row("windows signed", f"{status['windows_signed']:,}")
    t.add_row("proofs synced to the hub", f"{status['proofs_synced']:,}")
    t.add_row("gap records", f"{status['gap_records']:,}")
    t.add_row("anomalous rows (model score > 1)", f"{status['anomalous_rows']:,}")
    t.add_row("max anomaly score, last window", f"{status['last_max_score']}")
    return t


async def _run(
    workdir: Path, duration: float | None, replay: Path | None, port: int, console: Console
) -> int:
    # a local demo: reads are open (no login); a real hub needs operators (docs/hub.md)
    settings = HubSettings.create(workdir / "hub", allow_software_keys=True, open_reads=True)
    hub = HubServer(settings, port=port)
    tpm: SwtpmProcess | None = None
    await asyncio.to_thread(hub.start)
    console.print(f"[bold]hub[/bold] {hub.url}  (web view: {hub.url}/)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with PlantServer(replay=replay, period_s=0.1) as plant:
            what = f"replaying {replay}" if replay else "simulated pump (physics model)"
            console.print(f"[bold]plant[/bold] Modbus TCP 127.0.0.1:{plant.port} — {what}")
            cfg = _agent_config(workdir, hub.url, plant.port)
            signer, tpm, utid = await asyncio.to_thread(_identity, workdir, cfg, hub, console)
            console.print(f"[bold]gateway[/bold] {utid}")
            scorer = await asyncio.to_thread(_demo_scorer, workdir, console)
            runtime = AgentRuntime(cfg, signer, connectors_from_config(cfg), scorer=scorer)
            task = asyncio.create_task(runtime.run(stop), name="agent")
            started = time.monotonic()
            with Live(console=console, refresh_per_second=2) as live:
                while not stop.is_set():
                    elapsed = time.monotonic() - started
                    live.update(_status_table(hub.url, runtime.status(), elapsed))
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
                live.update(_status_table(hub.url, runtime.status(), time.monotonic() - started))
        return await asyncio.to_thread(_write_receipt, hub, utid, workdir, console)
    finally:
        await asyncio.to_thread(hub.stop)
        if tpm is not None:
            tpm.stop()


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
    console.print(f"\nreceipt of reading seq {seq}: {out}")
    console.print("check it offline with:\n")
    console.print(
        f"  factoryops verify {out} --trust {ca} --trust {hub_key}\n",
        highlight=False,
        soft_wrap=True,
    )
    return 0


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
def demo(duration: float | None, workdir: Path, replay: Path | None, port: int) -> None:
    """Run a simulated plant, the agent and the hub locally; print a verifiable receipt.

    \b
    Examples:
      factoryops demo                          # until Ctrl-C
      factoryops demo --duration 30 --workdir /tmp/fo
      factoryops demo --replay ../shared/datasets/skab/valve1/0.csv
    """
    console = Console()
    workdir = workdir.resolve()
    rc = asyncio.run(_run(workdir, duration, replay, port, console))
    raise SystemExit(rc)
