"""``factoryops fleet run``: the fleet loop on the demo hub, in one command.

After ``make demo`` (workdir ``demo-work``), in a second terminal::

    factoryops fleet run --workdir demo-work

1. the hub's data directory gets the fleet datasets: SKAB ``valve1``/``valve2`` (copied
   from ../shared), three SIMULATED pump variants, the demo site's normal operation and a
   log of its operating points;
2. an M2N2 job merges the five sites' autoencoders and publishes the merged model,
   calibrated on the demo pump's normal operation, as a TUF update (channel ``fleet``);
3. an RND1 study tunes its smoothing span and alarm limit for the demo's pump and
   publishes them as the signed configuration fragment ``config/demo/scoring.toml``; a
   second study searches the least-power setpoint on the demo pump's shadow twin and
   publishes it as ``config/demo/setpoint.toml`` (for people: the agent does not drive
   the plant);
4. the running demo agent's update task (``[updates]``, a task of the agent) fetches the
   model and the fragment with TUF, checks both on live data and applies them: the next
   micro-proofs carry the fleet version, the job id and the tuned limit, and the hub's
   /updates and /jobs pages show them.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console

from agent.config import AgentConfig
from agent.updates import install_trusted_root
from cloud_sync.updates import init_repository
from hil_tests.pump_variants import VARIANTS, write_setpoint_sweep, write_variant
from hil_tests.training import write_skab_csv

__all__ = ["CHECK_EVERY_S", "fleet", "prepare_fleet", "run", "trust_fleet_root"]

CHANNEL, FAMILY = "fleet", "autoencoder"
SKAB = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "skab"
CHECK_EVERY_S = 10  # the demo agent's [updates] interval_s


def prepare_fleet(
    hub_data: Path, workdir: Path, *, datasets: bool = True, skab: Path = SKAB
) -> Path:
    """The hub's TUF repository (made once) and, with ``datasets``, the fleet datasets;
    the root agents trust.

    The demo keeps the root keys in WORKDIR/tuf-offline: in a deployment they are made on
    an offline machine and never reach the hub (docs/fleet.md)."""
    root = hub_data / "tuf" / "metadata" / "1.root.json"
    if not root.exists():
        init_repository(hub_data / "tuf", workdir / "tuf-offline", hub_data / "tuf-keys")
    if not datasets:
        return root
    data = hub_data / "datasets"
    for name in ("valve1", "valve2"):
        if (skab / name).is_dir() and not (data / name).exists():
            shutil.copytree(skab / name, data / name)
    for name in VARIANTS:
        if not (data / name).exists():
            write_variant(data / name, name)
    if not (data / "demo-normal.csv").exists():
        write_skab_csv(data / "demo-normal.csv", 600)  # the demo plant's normal operation
    if not (data / "demo-setpoints.csv").exists():
        write_setpoint_sweep(data / "demo-setpoints.csv", "pump-a")
    return root


def trust_fleet_root(cfg: AgentConfig, root: Path) -> None:
    """Install the demo hub's TUF root for the agent's update task (once)."""
    if cfg.updates is None:  # a capsule's scenario takes no fleet updates
        return
    channel = cfg.spool.path.parent / "updates" / cfg.updates.family / cfg.updates.channel
    if not (channel / "tuf" / "root.json").exists():
        install_trusted_root(channel, root.read_bytes())


def _wait(client: httpx.Client, job_id: int, console: Console) -> dict[str, Any]:
    tick, last = threading.Event(), ""
    while True:
        got: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        line = f"  job {job_id} {got['state']:<9} {got['progress'] * 100:5.1f} %  {got['message']}"
        if line != last:
            console.print(line, highlight=False)
            last = line
        if got["state"] in ("succeeded", "failed", "cancelled", "dead"):
            break
        tick.wait(1.0)  # polling a remote job
    if got["state"] != "succeeded":
        raise click.ClickException(f"job {job_id} {got['state']}: {got.get('error')}")
    return got


def _submit(client: httpx.Client, type_: str, console: Console, **params: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"type": type_, "params": params})
    if r.status_code != 201:
        raise click.ClickException(f"hub refused the {type_} job: {r.text}")
    job = r.json()
    base = str(client.base_url).rstrip("/")
    console.print(f"[bold]{type_}[/bold] job {job['id']}: {base}/jobs/{job['id']}")
    return _wait(client, int(job["id"]), console)


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-work"),
    show_default=True,
    help="The running demo's workdir (its hub's URL and admin token are read there).",
)
@click.option("--generations", default=300, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--trials", default=40, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--site",
    "only",
    multiple=True,
    type=click.Choice(("valve1", "valve2", *VARIANTS)),
    help="Merge only these sites (repeat it; default all five; pump-a is always in).",
)
def run(workdir: Path, generations: int, trials: int, only: tuple[str, ...]) -> None:
    """Run an M2N2 job and RND1 studies on the demo hub and ship the result to its agent.

    \b
    Example (with `make demo` running in another terminal):
      factoryops fleet run --workdir demo-work
      factoryops fleet run --workdir demo-work --site pump-b --generations 20   # quicker
    """
    console = Console()
    hub_data = workdir / "hub"
    url_file = hub_data / "url"
    if not url_file.exists():
        raise click.ClickException(f"no running demo hub in {workdir}: start `make demo` first")
    url = url_file.read_text(encoding="utf-8").strip()
    token = (hub_data / "admin-token").read_text(encoding="ascii").strip()
    prepare_fleet(hub_data, workdir)
    wanted = {"pump-a", *only} if only else {"valve1", "valve2", *VARIANTS}
    sites = {
        name: name
        for name in ("valve1", "valve2", *VARIANTS)
        if name in wanted and (hub_data / "datasets" / name).is_dir()
    }
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
        merged = _submit(
            c, "m2n2", console, sites=sites, generations=generations, publish_channel=CHANNEL,
            calibration_csv="datasets/demo-normal.csv",
        )  # fmt: skip
        r = merged["result"]
        console.print(
            f"  held-out F1: merged {r['merged_score']}, best single {r['best_single_score']}"
            f" ({r['best_single_site']}), parameter average {r['averaged_score']};"
            f" published {FAMILY}/{CHANNEL} version {r['published']['version']}"
        )
        tuned = _submit(
            c, "rnd1.tune", console, model_job=merged["id"], site="pump-a", n_trials=trials,
            publish_config_site="demo",
        )  # fmt: skip
        t = tuned["result"]
        console.print(
            f"  pump-a: span {t['best']['span']}, limit x{t['best']['threshold_factor']:.2f};"
            f" held-out F1 {t['held_out_f1']:.3f} (untuned {t['held_out_f1_untuned']:.3f});"
            f" published config/demo/scoring.toml version {t['published_config']['version']}"
        )
        point = _submit(
            c, "rnd1.setpoint", console, sweep_csv="demo-setpoints.csv", min_flow_lpm=100.0,
            min_npsh_margin_m=7.0, n_trials=trials, publish_site="demo",
        )  # fmt: skip
        console.print(f"  setpoint: {json.dumps(point['result']['best'])}")
    console.print(
        "The demo agent checks for updates every `demo --update-every` seconds (default"
        f" {CHECK_EVERY_S}): watch {url}/updates, and its next"
        " proofs name the fleet version and job and carry the tuned limit (factoryops agent"
        f" status --config {workdir}/agent/agent.toml)."
    )


@click.group()
def fleet() -> None:
    """The fleet loop: merge and tune models on the hub, ship them to gateways (TUF)."""


fleet.add_command(run)
