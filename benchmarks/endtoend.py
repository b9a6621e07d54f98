"""End to end on one core: Modbus read -> window -> signature -> committed in the spool.

Two processes, each pinned to its own core (``os.sched_setaffinity``): a pymodbus server
serving SIMULATED devices (``FleetServer``) on one, the real agent runtime (connectors,
window builder, scorer, signer, SQLite spool; an offline gateway: no hub) on the other.
The figure is readings committed (signed, fsynced) per second after a warm-up, read from the
runtime's own counters; beside it, readings committed per second of the agent's own CPU time
(``time.process_time``, every thread), the figure a shared machine cannot spoil; and the
agent's resident memory at the end (VmRSS), with and without
the demo's int8 shadow twin loaded. Each agent run is a fresh process, so one run's memory
does not count in the other's, on the event loop ``factoryops agent run`` uses
(``agent/eventloop.py``: uvloop; ``FACTORYOPS_EVENT_LOOP=asyncio`` measures asyncio's).

Used by ``factoryops bench modbus`` (``end_to_end_tags_per_s``, ``agent_rss_mib``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import eventloop

__all__ = ["end_to_end"]

SERVER_CPU, AGENT_CPU = 1, 0


def _pin(pid: int, cpu: int) -> int:
    """Pin ``pid`` to ``cpu`` when this machine has it; the CPU it runs on."""
    cpus = sorted(os.sched_getaffinity(0))
    chosen = cpu if cpu in cpus else cpus[0]
    os.sched_setaffinity(pid, {chosen})
    return chosen


def _config(port: int, devices: int, tags: int, poll_ms: int, spool: Path) -> str:
    out = ['[device]\nname = "bench"\n', f'[spool]\npath = "{spool}"\n']
    for d in range(1, devices + 1):
        out.append(
            f'[[modbus]]\nname = "d{d}"\nhost = "127.0.0.1"\nport = {port}\ndevice_id = {d}\n'
            f"poll_interval_ms = {poll_ms}\ntimeout_ms = 2000\n"
            # one server stands for 20 PLCs on 20 hosts: a connection each, as there
            "share_connection = false\n"
        )
        out += [f'[[modbus.tags]]\nname = "d{d}.t{t}"\naddress = {2 * t}\n' for t in range(tags)]
    return "".join(out)


async def _serve(devices: int) -> None:
    from benchmarks.modbus import FleetServer  # noqa: PLC0415 - the server process only

    async with FleetServer(devices, registers=256) as fleet:
        print(fleet.port, flush=True)
        await asyncio.Event().wait()


async def _agent(config: Path, warmup_s: float, seconds: float, manifest: str) -> dict[str, Any]:
    from agent.config import load_config  # noqa: PLC0415 - the agent process only
    from agent.runtime import build_runtime  # noqa: PLC0415 - imported when used, so the CLI and tests start fast
    from attestation.signers.software import SoftwareSigner  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    cfg = load_config(config)
    scorer = None
    if manifest:  # imported only then: onnxruntime and numpy are most of a model's memory
        from agent.inference import OnnxScorer  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

        scorer = OnnxScorer.open(Path(manifest))
    runtime = build_runtime(cfg, SoftwareSigner.generate(), scorer=scorer)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await asyncio.sleep(warmup_s)  # connect, fill the pipeline (a benchmark, not a test)
    c0, a0 = runtime.counters.readings_committed, runtime.counters.readings_acquired
    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    c1, a1 = runtime.counters.readings_committed, runtime.counters.readings_acquired
    rss_kib = _rss_kib()
    stop.set()
    await task
    return {
        "committed_per_s": (c1 - c0) / elapsed,
        "acquired_per_s": (a1 - a0) / elapsed,
        # the agent's own CPU time (every thread): what one core does when it is not shared
        "committed_per_cpu_s": (c1 - c0) / cpu if cpu > 0 else 0.0,
        "cpu_share": cpu / elapsed,
        "rss_mib": rss_kib / 1024,
        "windows_signed": runtime.counters.windows_signed,
    }


def _rss_kib() -> int:
    """This process's resident set (``VmRSS`` of /proc/self/status), in KiB."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))


def _demo_model(cache: Path) -> Path:
    """The demo's shadow twin (trained on 10 simulated minutes), int8, built once in ``cache``."""
    from hil_tests.training import simulated_normal  # noqa: PLC0415 - needs numpy/sklearn
    from models_onnx.recipes import Recipe, build  # noqa: PLC0415 - imported when used, so the CLI and tests start fast

    manifest = cache / "pump-twin.int8.manifest.json"
    if not manifest.exists():
        signals, x = simulated_normal(600)
        build(Recipe(), x, signals, cache, model_id="pump-twin")
    return manifest


def _run_agent(config: Path, warmup_s: float, seconds: float, manifest: str) -> dict[str, Any]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            __name__,
            "agent",
            str(config),
            str(warmup_s),
            str(seconds),
            manifest,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    _pin(proc.pid, AGENT_CPU)  # before it imports anything heavy: all its work is on one core
    out, _ = proc.communicate(timeout=warmup_s + seconds + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"the agent process failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def end_to_end(
    devices: int, tags: int, seconds: float, poll_ms: int = 10, warmup_s: float = 3.0
) -> dict[str, float]:
    """Tags/s from the Modbus read to a committed window, and the agent's RSS, with and
    without the demo's int8 twin; server and agent each on their own core."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        manifest = _demo_model(root / "models")
        server = subprocess.Popen(
            [sys.executable, "-m", __name__, "serve", str(devices)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            server_cpu = _pin(server.pid, SERVER_CPU)
            assert server.stdout is not None
            port = int(server.stdout.readline())
            runs = {}
            for label, model in (("", ""), ("_with_model", str(manifest))):
                config = root / f"agent{label}.toml"
                spool = root / f"spool{label}.db"
                config.write_text(_config(port, devices, tags, poll_ms, spool))
                runs[label] = _run_agent(config, warmup_s, seconds, model)
        finally:
            server.terminate()
            server.wait(timeout=10)
    plain, scored = runs[""], runs["_with_model"]
    return {
        "end_to_end_tags_per_s": plain["committed_per_s"],
        "end_to_end_tags_per_s_with_model": scored["committed_per_s"],
        "end_to_end_acquired_per_s": plain["acquired_per_s"],
        "end_to_end_tags_per_cpu_s": plain["committed_per_cpu_s"],
        "end_to_end_tags_per_cpu_s_with_model": scored["committed_per_cpu_s"],
        "end_to_end_agent_cpu_share": plain["cpu_share"],
        "agent_rss_mib_no_model": plain["rss_mib"],
        "agent_rss_mib": scored["rss_mib"],
        "end_to_end_same_core": float(server_cpu == AGENT_CPU),  # 1: only one core here
    }


def _main(argv: list[str]) -> None:
    if argv[0] == "serve":
        asyncio.run(_serve(int(argv[1])))
    elif argv[0] == "agent":
        config, warmup_s, seconds, manifest = argv[1], float(argv[2]), float(argv[3]), argv[4]
        r = eventloop.run(_agent(Path(config), warmup_s, seconds, manifest))  # as `agent run`
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:] or ["agent"])
