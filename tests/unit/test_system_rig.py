"""System rig files are refused before anything starts, with file, line and key: an unknown
fault, a fault whose part the rig lacks (a TPM), a clock jump of nothing, an impossible
schedule (past the end, or two faults on one target at once), a node the rig lacks, a port
already in use. Every shipped rig parses."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hil_tests.errors import RigError
from hil_tests.system_rig import load_system_rig
from hil_tests.system_runner import preflight

RIGS = sorted((Path(__file__).parents[2] / "hil_tests" / "rigs").glob("*.toml"))
HEAD = '[system]\nduration_s = 20\nnodes = ["n1"]\nplc = true\n'
CHECK = '[[check]]\nkind = "windows_verify"\n'


def rig(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rig.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "path", [p for p in RIGS if "system" in p.read_text()], ids=lambda p: p.name
)
def test_every_shipped_system_rig_parses(path: Path) -> None:
    loaded = load_system_rig(path)
    assert loaded.checks


@pytest.mark.parametrize(
    ("inject", "message"),
    [
        (
            'kind = "meteor_strike"\nat_s = 1',
            r"rig\.toml:6: inject\[0\]\.kind: unknown fault 'meteor_strike'",
        ),
        ('kind = "tpm_reset"\nat_s = 1', r"rig\.toml:6: inject\[0\]\.kind: give tpm = true"),
        (
            'kind = "node_repl_reboot"\nnode = "n1"\nat_s = 1',
            r"rig\.toml:6: inject\[0\]\.kind: give node_repl = true",
        ),
        (
            'kind = "clock_jump"\noffset_s = 0.2\nat_s = 1',
            r"rig\.toml:7: inject\[0\]\.offset_s: expected a jump of 1 s to a year",
        ),
        (
            'kind = "clock_jump"\noffset_s = 60\nat_s = 1\nduration_s = 0',
            r"rig\.toml:9: inject\[0\]\.duration_s: a clock jump needs duration_s > 0",
        ),
        ('kind = "disk_full"\nat_s = 1', r"rig\.toml:6: inject\[0\]\.kind: give spool_mb"),
        ('kind = "hub_partition"\nat_s = 1', r"rig\.toml:6: inject\[0\]\.kind: give hub = true"),
        (
            'kind = "plc_partition"\nat_s = 15\nduration_s = 6',
            r"rig\.toml:5: inject\[0\]: impossible schedule: .*ends at 21",
        ),
        (
            'kind = "agent_kill9"\nat_s = 1\nrepeat = 3\nevery_s = 1\nduration_s = 2',
            r"rig\.toml:9: inject\[0\]\.every_s: .*would overlap",
        ),
        (
            'kind = "node_reboot"\nnode = "n7"\nat_s = 1',
            r"rig\.toml:7: inject\[0\]\.node: 'n7' is not one of",
        ),
        (
            'kind = "sensor_stuck"\nnode = "n1"\nsensor = "humidity"\nat_s = 1',
            r"rig\.toml:8: inject\[0\]\.sensor",
        ),
        (
            'kind = "plc_loss"\nloss = 1.5\nat_s = 1',
            r"rig\.toml:7: inject\[0\]\.loss: expected 0\.\.1",
        ),
    ],
)
def test_a_bad_fault_is_refused_with_its_line_and_key(
    tmp_path: Path, inject: str, message: str
) -> None:
    path = rig(tmp_path, f"{HEAD}[[inject]]\n{inject}\n{CHECK}")
    with pytest.raises(RigError, match=message) as err:
        load_system_rig(path)
    assert err.value.hint


@pytest.mark.parametrize(
    ("system", "inject", "message"),
    [
        ('plc_transport = "profibus"\n', "", r"rig\.toml:5: system\.plc_transport: 'profibus'"),
        ('replay = "none.csv"\n', "", r"rig\.toml:5: system\.replay: .*none\.csv is not a file"),
        (
            'plc_transport = "rtu"\n',
            '[[inject]]\nkind = "plc_partition"\nat_s = 1\n',
            r"rig\.toml:7: inject\[0\]\.kind: a serial line has no TCP link",
        ),
        (
            'plc_transport = "opcua"\n',
            '[[inject]]\nkind = "slave_dead"\nat_s = 1\n',
            r"rig\.toml:7: inject\[0\]\.kind: 'slave_dead' breaks the Modbus server",
        ),
    ],
)
def test_a_transport_or_replay_the_rig_cannot_have_is_refused(
    tmp_path: Path, system: str, inject: str, message: str
) -> None:
    path = rig(tmp_path, f"{HEAD}{system}{inject}{CHECK}")
    with pytest.raises(RigError, match=message):
        load_system_rig(path)


def test_a_plant_fault_must_name_a_plant_fault_and_its_check_needs_a_model(
    tmp_path: Path,
) -> None:
    bad = f'{HEAD}[[inject]]\nkind = "plant_fault"\nfault = "meltdown"\nat_s = 1\n{CHECK}'
    with pytest.raises(RigError, match=r"rig\.toml:7: inject\[0\]\.fault: 'meltdown'"):
        load_system_rig(rig(tmp_path, bad))
    good = f'{HEAD}[[inject]]\nkind = "plant_fault"\nfault = "cavitation"\nat_s = 1\n'
    check = '[[check]]\nkind = "anomaly_within"\ninject = 0\nwithin_s = 5\n'
    with pytest.raises(RigError, match=r"rig\.toml:10: check\[0\]\.kind: give model = true"):
        load_system_rig(rig(tmp_path, good + check))


def test_two_faults_on_one_target_at_once_are_refused(tmp_path: Path) -> None:
    text = (
        f'{HEAD}[[inject]]\nkind = "plc_partition"\nat_s = 2\nduration_s = 5\n'
        '[[inject]]\nkind = "plc_latency"\nat_s = 4\n'
        f"{CHECK}"
    )
    with pytest.raises(RigError, match=r"rig\.toml:9: inject\[1\]: .*overlaps inject\[0\]"):
        load_system_rig(rig(tmp_path, text))


def test_a_check_naming_a_fault_that_is_not_a_plc_fault_is_refused(tmp_path: Path) -> None:
    text = (
        f'{HEAD}[[inject]]\nkind = "agent_kill9"\nat_s = 2\n'
        '[[check]]\nkind = "plc_outage_visible"\ninject = 0\n'
    )
    with pytest.raises(RigError, match=r"rig\.toml:10: check\[0\]\.inject"):
        load_system_rig(rig(tmp_path, text))


def test_a_no_source_gap_check_must_name_its_source(tmp_path: Path) -> None:
    text = f'{HEAD}[[check]]\nkind = "no_source_gap"\nsource = ""\n'
    with pytest.raises(RigError, match=r"rig\.toml:7: check\[0\]\.source: expected a source"):
        load_system_rig(rig(tmp_path, text))
    loaded = load_system_rig(rig(tmp_path, text.replace('source = ""', 'source = "n1"')))
    assert loaded.checks[0].source == "n1"


def test_a_fixed_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = rig(
            tmp_path, HEAD.replace("plc = true\n", f"plc = true\nplc_port = {port}\n") + CHECK
        )
        loaded = load_system_rig(path)
        with pytest.raises(
            RigError, match=rf"rig\.toml:5: system\.plc_port: port {port} is in use"
        ):
            preflight(loaded)


def test_faults_that_need_a_simulator_are_refused_on_real_equipment(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "plc.toml").write_text(
        '[[modbus]]\nname = "press"\nhost = "10.0.0.7"\n[[modbus.tags]]\nname = "p"\n'
    )
    hardware = (
        '[hardware]\nplc = "10.0.0.7:502"\nplc_tags = "plc.toml"\n'
        'broker = "mqtt://10.0.0.5:1883"\nnodes_dir = "keys"\nnode_topic = "site/nodes"\n'
    )
    for kind in ("slave_dead", "sensor_stuck", "node_reboot", "broker_restart"):
        extra = {"sensor_stuck": 'node = "n1"\nsensor = "temp"\n', "node_reboot": 'node = "n1"\n'}
        text = (
            f'{HEAD}{hardware}[[inject]]\nkind = "{kind}"\nat_s = 1\n{extra.get(kind, "")}{CHECK}'
        )
        with pytest.raises(
            RigError, match=rf"rig\.toml:12: inject\[0\]\.kind: '{kind}' needs the simulator"
        ):
            load_system_rig(rig(tmp_path, text))
    ok = f'{HEAD}{hardware}[[inject]]\nkind = "plc_partition"\nat_s = 1\n{CHECK}'
    loaded = load_system_rig(rig(tmp_path, ok))
    assert loaded.hardware.plc_signals == ("p",) and loaded.hardware.real_nodes
