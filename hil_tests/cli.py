"""``factoryops sim`` and ``factoryops hil``: serve the SIMULATED plant, and run HIL rigs.

``sim plant`` serves the pump model (or a SKAB replay) over Modbus TCP, optionally OPC UA and
MQTT; ``hil run`` runs a rig file's faults against it and judges its expectations.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from hil_tests.errors import RigFailed
from hil_tests.modbus_server import PLANT_REGISTER_MAP, PlantServer
from hil_tests.plant import DEFAULT_FAULTS, SENSOR_FAULTS, Fault
from hil_tests.rig import Verdict

__all__ = ["hil", "sim"]


@click.group()
def sim() -> None:
    """Simulated plants for demos, tests and HIL rigs (simulations, not real equipment).

    \b
    Example:
      factoryops sim plant --modbus-port 5020 --opcua-port 4840
    """


def _faults(spec: str) -> tuple[Fault, ...]:
    if spec == "default":
        return DEFAULT_FAULTS
    if spec == "none":
        return ()
    from hil_tests.rig import load_faults  # noqa: PLC0415 - only when a file is given

    return load_faults(Path(spec))


@sim.command()
@click.option("--modbus-port", type=int, default=5020, show_default=True, help="0 = any free.")
@click.option("--opcua-port", type=int, default=None, help="Also serve OPC UA (0 = any free).")
@click.option(
    "--mqtt", "mqtt_url", default=None, help="Also publish to mqtt://host[:port][/prefix]."
)
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve a SKAB-format CSV (looping, at its timestamps' pace) instead of the model.",
)
@click.option(
    "--speed", type=float, default=1.0, show_default=True, help="Plant seconds per wall second."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed of the model.")
@click.option(
    "--faults",
    "faults_spec",
    default="default",
    show_default=True,
    help="default | none | FILE of [[fault]] tables (see docs/plant.md).",
)
@click.option("--period", type=float, default=0.1, show_default=True, help="Update every S.")
@click.option("--duration", type=float, default=None, help="Stop after S wall seconds.")
def plant(
    modbus_port: int,
    opcua_port: int | None,
    mqtt_url: str | None,
    replay: Path | None,
    speed: float,
    seed: int,
    faults_spec: str,
    period: float,
    duration: float | None,
) -> None:
    """Serve the SIMULATED pump plant on 127.0.0.1 until Ctrl-C; prints what it serves.

    \b
    Examples:
      factoryops sim plant --modbus-port 5020
      factoryops sim plant --opcua-port 4840 --mqtt mqtt://127.0.0.1:1883
      factoryops sim plant --replay ../shared/datasets/skab/valve1/0.csv
      factoryops sim plant --faults none --speed 10 --duration 60
    """
    server = PlantServer(
        modbus_port=modbus_port,
        opcua_port=opcua_port,
        mqtt_url=mqtt_url,
        period_s=period,
        speed=speed,
        seed=seed,
        faults=_faults(faults_spec),
        replay=replay,
    )
    asyncio.run(_serve(server, duration))


async def _serve(server: PlantServer, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server as srv:
        click.echo(f"SIMULATED plant: {srv.describe()}, x{srv.speed} speed")
        click.echo(f"Modbus TCP  127.0.0.1:{srv.port}  device id 1")
        for s in PLANT_REGISTER_MAP:
            click.echo(
                f"  {s.table:<8} {s.address:>3}  {s.type:<8} {s.word_order:<6} "
                f"x{s.scale:<6} {s.offset:+7.1f}  {s.signal} [{s.unit}]"
            )
        for face in srv.faces:
            click.echo(face.describe())
        if srv.replay is None:
            for f in srv.faults:
                where = f" on {f.signal}" if f.kind in SENSOR_FAULTS else ""
                click.echo(
                    f"fault       {f.kind}{where} at {f.start_s:g} s for {f.duration_s:g} s, "
                    f"severity {f.severity:g}"
                )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()


@sim.command()
@click.option("--seconds", type=float, default=600, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def dataset(seconds: float, seed: int, out: Path) -> None:
    """Write fault-free simulated operation as a SKAB-format CSV (for training models).

    \b
    Example:
      factoryops sim dataset --seconds 600 --out normal.csv
    """
    from hil_tests.training import write_skab_csv  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    n = write_skab_csv(out, seconds, seed=seed)
    click.echo(f"{out}: {n} rows of simulated normal operation (seed {seed})")


@click.group()
def hil() -> None:
    """Hardware-in-the-loop rigs: scheduled plant and transport faults, judged expectations.

    \b
    Example:
      factoryops hil run hil_tests/rigs/pump_faults.toml
    """


@hil.command()
@click.argument("rig_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write report.html (charts, faults shaded, a row per check) and report.json here.",
)
def run(rig_file: Path, out_dir: Path | None) -> None:
    """Run RIG_FILE; exit 1 if any check or expectation fails.

    A rig with a [system] table runs the real agent with the SIMULATED PLC, firmware nodes
    and a private broker (docs/plant.md); one without runs the Modbus probe rig. Ctrl-C stops
    everything the rig started and still writes a partial report.

    \b
    Examples:
      factoryops hil run hil_tests/rigs/pump_faults.toml
      factoryops hil run hil_tests/rigs/agent_kill.toml --out /tmp/rig-report
    """
    from hil_tests.rig import read_toml  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    doc, _ = read_toml(rig_file)
    if "system" in doc:
        _run_system(rig_file, out_dir or Path("hil-report") / rig_file.stem)
    else:
        _run_probe_rig(rig_file, out_dir)


def _verdict_table(title: str, verdicts: Sequence[Verdict]) -> None:
    table = Table(title=title)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for v in verdicts:
        table.add_row(v.name, "[green]pass[/green]" if v.passed else "[red]FAIL[/red]", v.detail)
    Console().print(table)


def _fail_if_any(verdicts: Sequence[Verdict], hint: str) -> None:
    failed = [v.name for v in verdicts if not v.passed]
    if failed:
        raise RigFailed(
            f"{len(failed)} of {len(verdicts)} checks failed: {', '.join(failed)}", hint=hint
        )


def _run_system(rig_file: Path, out_dir: Path) -> None:
    from hil_tests.report import write_report  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from hil_tests.system_rig import load_system_rig  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from hil_tests.system_runner import SystemReport, run_system  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    rig = load_system_rig(rig_file)  # every refusal happens here, before anything starts
    holder: list[SystemReport] = []
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[t]}")
    ) as bar:
        task = bar.add_task(f"rig {rig_file.name}", total=rig.duration_s + rig.settle_s, t="")

        def progress(done: float, total: float) -> None:
            bar.update(task, completed=done, t=f"{done:,.0f}/{total:,.0f} s")

        async def main() -> None:
            holder.append(await run_system(rig, out_dir, progress))

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            # the runner wrote its partial report on the way out; if it never got that far
            # (interrupted while starting), say so in one of our own
            if not (out_dir / "report.json").exists():
                write_report(out_dir, SystemReport(rig, 0, interrupted=True).to_json())
            click.echo(f"interrupted: the rig's processes are stopped; {out_dir / 'report.html'}")
            raise SystemExit(130) from None
    report = holder[0]
    html_path, _ = write_report(out_dir, report.to_json())
    _verdict_table(f"{rig_file}: report {html_path}", report.verdicts)
    if report.error:
        raise RigFailed(f"the rig could not run: {report.error}", hint=f"see {out_dir}/work/*.log")
    _fail_if_any(report.verdicts, f"open {html_path}; the agent's log is in {out_dir}/work")


def _run_probe_rig(rig_file: Path, out_dir: Path | None) -> None:
    from hil_tests.report import write_report  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from hil_tests.rig import load_rig  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from hil_tests.rig_runner import run_rig  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    rig = load_rig(rig_file)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[t]}")
    ) as bar:
        task = bar.add_task(f"rig {rig_file.name}", total=rig.plant.duration_s, t="")

        def progress(done: float, total: float) -> None:
            bar.update(task, completed=done, t=f"{done:,.0f}/{total:,.0f} plant s")

        report = asyncio.run(run_rig(rig, progress))
    title = f"{rig_file}: {report.reads} probe reads, {report.failed_reads} failed"
    if out_dir is not None:
        doc = {
            "rig": str(rig_file),
            "passed": report.passed,
            "duration_s": rig.plant.duration_s,
            "checks": [
                {"name": v.name, "passed": v.passed, "detail": v.detail} for v in report.verdicts
            ],
            "injected": [
                {
                    "inject": i,
                    "kind": f"slave_{t.kind}",
                    "at_s": t.start_s,
                    "end_s": t.start_s + t.duration_s,
                }
                for i, t in enumerate(rig.transport)
            ],
            "figures": {"reads": report.reads, "failed_reads": report.failed_reads},
        }
        html_path, _ = write_report(out_dir, doc)
        title += f"; report {html_path}"
    _verdict_table(title, report.verdicts)
    _fail_if_any(report.verdicts, "read the detail column; rerun with -v for the probe's log")
