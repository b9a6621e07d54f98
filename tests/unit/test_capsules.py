"""The capsule format: the 27 capsules validate and apply; bad ones are refused by key and line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from capsules.catalogue import CATALOGUE, apply, catalogue, find, load
from capsules.errors import CapsuleInvalid
from capsules.render import Endpoints
from capsules.schema import AREAS
from capsules.spec import parse_capsule
from capsules.units import UnitMismatch, check_unit
from factoryops.cli import cli

MAGNETS = (CATALOGUE / "permanent-magnets" / "capsule.toml").read_text(encoding="utf-8")


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def _refused(text: str) -> CapsuleInvalid:
    with pytest.raises(CapsuleInvalid) as err:
        parse_capsule(text.encode(), "bad.toml")
    return err.value


def test_the_catalogue_holds_27_valid_capsules_one_per_area() -> None:
    caps = catalogue()
    assert [c.area for c in caps] == list(range(1, 28))
    assert len({c.name for c in caps}) == 27
    assert {c.name for c in caps if c.priority} == {
        "permanent-magnets",
        "quality-ndt",
        "logistics-routing",
        "warehousing-inventory",
    }


@pytest.mark.parametrize("folder", sorted(p.name for p in CATALOGUE.iterdir() if p.is_dir()))
def test_every_capsule_cites_the_sources_of_its_ranges(folder: str) -> None:
    readme = (CATALOGUE / folder / "README.md").read_text(encoding="utf-8")
    sources = readme.split("## Sources of the ranges", 1)[1]
    assert len(re.findall(r"^- ", sources, re.M)) >= 2
    cap = find(folder)
    assert f"area {cap.area}: {AREAS[cap.area - 1]}" in readme
    for s in cap.signals:  # every signal is documented with its unit
        assert f"`{s.name}`" in readme


def test_every_capsule_applies_to_a_config_the_agent_accepts(tmp_path: Path) -> None:
    for cap in catalogue():
        out = tmp_path / cap.name
        apply(cap, out, Endpoints(hub_url="http://127.0.0.1:9", signer="software"))
        cfg = load_config(out / "agent.toml")
        names = [t.name for d in cfg.modbus for t in d.tags] + [
            s.name for items in cfg.connectors.values() for c in items for s in c.signals
        ]
        assert names == [s.name for s in cap.signals]
        assert cfg.window.max_readings == cap.proof.window_readings
        assert cfg.spool.disk_cap_bytes == cap.edge.disk_cap_mib << 20


def test_apply_cli_writes_the_three_files_and_check_config_accepts_them(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "site"
    r = runner.invoke(
        cli,
        [
            "capsule",
            "apply",
            "quality-ndt",
            "--out",
            str(out),
            "--signer",
            "software",
            "--endpoint",
            "ndt-station=10.0.0.7:502",
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "agent.toml",
        "hub-jobs.json",
        "report-template.json",
    ]
    assert 'host = "10.0.0.7"' in (out / "agent.toml").read_text()
    r = runner.invoke(cli, ["agent", "check-config", str(out / "agent.toml")])
    assert r.exit_code == 0 and "tags=7" in r.output


def test_list_shows_27_capsules() -> None:
    r = CliRunner().invoke(cli, ["capsule", "list"])
    assert r.exit_code == 0, r.output
    assert "27 capsules, all valid" in r.output


def test_an_unknown_key_is_refused_with_its_path_and_line() -> None:
    text = MAGNETS.replace("sample_hz = 1\naddress = 8", "sample_hz = 1\nadress = 8", 1)
    err = _refused(text)
    assert err.key == "connector[0].signals[4].adress"
    assert err.line == _line_of(text, "adress = 8")
    assert "unknown key" in str(err) and f"bad.toml:{err.line}" in str(err)


def test_an_unknown_top_level_table_is_refused() -> None:
    err = _refused(MAGNETS + "\n[extras]\nx = 1\n")
    assert err.key == "extras" and err.line == MAGNETS.count("\n") + 2


def test_a_unit_of_another_quantity_is_refused() -> None:
    text = MAGNETS.replace('unit = "uWb"', 'unit = "mT"', 1)
    err = _refused(text)
    assert err.key == "connector[0].signals[4].unit"
    assert err.line == _line_of(text, 'unit = "mT"')
    assert "magnetic_flux" in err.detail


def test_an_unknown_unit_is_refused() -> None:
    err = _refused(MAGNETS.replace('unit = "uWb"', 'unit = "furlongs per wombat"', 1))
    assert err.key == "connector[0].signals[4].unit" and "not a unit" in err.detail


def test_a_range_whose_low_is_above_its_high_is_refused() -> None:
    text = MAGNETS.replace("range = [0.0, 200.0]", "range = [200.0, 0.0]", 1)
    err = _refused(text)
    assert err.key == "connector[0].signals[4].range"
    assert err.line == _line_of(text, "range = [200.0, 0.0]")


def test_a_normal_band_outside_the_range_is_refused() -> None:
    err = _refused(MAGNETS.replace("normal = [86.0, 94.0]", "normal = [86.0, 240.0]", 1))
    assert err.key == "connector[0].signals[4].normal" and "outside range" in err.detail


def test_an_int16_register_that_cannot_hold_the_range_is_refused() -> None:
    text = MAGNETS.replace("address = 8", 'address = 8\ntype = "int16"\nscale = 0.001', 1)
    err = _refused(text)
    assert err.key == "connector[0].signals[4].range" and "int16" in err.detail


def test_an_unknown_model_family_is_refused() -> None:
    text = MAGNETS.replace('family = "twin"', 'family = "lstm"', 1)
    err = _refused(text)
    assert err.key == "model.family" and err.line == _line_of(text, 'family = "lstm"')


def test_a_model_over_a_signal_the_capsule_lacks_is_refused() -> None:
    err = _refused(MAGNETS.replace('"flux", "surface_field"]', '"flux", "torque"]', 1))
    assert err.key == "model.signals[5]"


def test_a_deliverable_template_with_a_missing_field_is_refused() -> None:
    text = MAGNETS.replace('kind = "control_chart"\n', "", 1)
    err = _refused(text)
    assert err.key == "deliverable.widget.kind" and err.detail == "missing"
    assert err.line == _line_of(text, "[deliverable.widget]")


def test_a_narrative_naming_an_uncomputed_figure_is_refused() -> None:
    text = MAGNETS.replace("{readings_lost} reading(s) lost", "{savings} saved", 1)
    err = _refused(text)
    assert err.key == "deliverable.narrative[1].text" and "savings" in err.detail


def test_two_signals_on_one_register_are_refused() -> None:
    err = _refused(MAGNETS.replace("address = 2\n", "address = 1\n", 1))
    assert err.key == "connector[0].signals[1].address" and "capacitor_voltage" in err.detail


def test_a_key_of_another_protocol_is_refused() -> None:
    err = _refused(MAGNETS.replace("address = 12", 'address = 12\nnode = "ns=2;s=x"', 1))
    assert err.key == "connector[0].signals[6].node"


def test_a_toml_syntax_error_names_its_line() -> None:
    err = _refused(MAGNETS.replace("area = 12", "area = = 12", 1))
    assert err.line == _line_of(MAGNETS, "area = 12")


def test_validate_cli_names_key_and_line_and_apply_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "capsule.toml").write_text(MAGNETS.replace('unit = "uWb"', 'unit = "K"', 1))
    runner = CliRunner()
    r = runner.invoke(cli, ["capsule", "validate", str(bad)])
    assert r.exit_code == 1
    assert "connector[0].signals[4].unit" in str(r.exception)
    out = tmp_path / "out"
    r = runner.invoke(cli, ["capsule", "apply", str(bad), "--out", str(out)])
    assert r.exit_code == 1 and not out.exists()


def test_apply_refuses_a_bad_endpoint_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli, ["capsule", "apply", "forming", "--out", str(out), "--endpoint", "forming-plc=x"]
    )
    assert r.exit_code == 1 and not out.exists()


@pytest.mark.parametrize(
    ("unit", "quantity"),
    [("degC", "temperature"), ("l/min", "volume_flow"), ("g", "acceleration"), ("1/h", "rate")],
)
def test_units_of_the_shop_floor_measure_their_quantity(unit: str, quantity: str) -> None:
    check_unit(unit, quantity)


@pytest.mark.parametrize(
    ("unit", "quantity"),
    [("mm", "temperature"), ("dB", "length"), ("bar", "level"), ("kg", "no-such-quantity")],
)
def test_units_of_another_quantity_are_refused(unit: str, quantity: str) -> None:
    with pytest.raises(UnitMismatch):
        check_unit(unit, quantity)


_LINES = MAGNETS.splitlines()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(_LINES) - 1),
    st.sampled_from(["", "x = 1", "[x]", "name = 3", "range = [1]", '"', "sample_hz = -1"]),
)
def test_a_mangled_capsule_is_either_valid_or_refused_with_a_key(line: int, new: str) -> None:
    text = "\n".join([*_LINES[:line], new, *_LINES[line + 1 :]])
    refusal: CapsuleInvalid | None = None
    try:
        parse_capsule(text.encode(), "m.toml")
    except CapsuleInvalid as err:  # any other exception fails the test
        refusal = err
    if refusal is not None:
        assert refusal.key
        if refusal.key != "<toml>":
            tomllib.loads(text)  # a refusal past the TOML parse names a key of the document


def test_load_refuses_a_file_past_its_size_limit(tmp_path: Path) -> None:
    big = tmp_path / "capsule.toml"
    big.write_text(MAGNETS + "#" * (300 * 1024))
    with pytest.raises(CapsuleInvalid, match="larger than"):
        load(big)


def test_the_full_example_in_the_docs_is_the_catalogues_and_validates() -> None:
    docs = (CATALOGUE.parents[1] / "docs" / "capsules.md").read_text(encoding="utf-8")
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    assert example == MAGNETS
    assert parse_capsule(example.encode(), "docs/capsules.md").name == "permanent-magnets"


def test_the_job_policy_names_job_types_the_hub_runs() -> None:
    import typing

    from capsules.render import HUB_JOB_TYPES, M2N2_FAMILIES, job_policy
    from cloud_sync.jobs.fleet import M2N2Params, fleet_job_types

    assert set(HUB_JOB_TYPES.values()) <= set(fleet_job_types().types)
    assert typing.get_args(M2N2Params.model_fields["family"].annotation) == M2N2_FAMILIES
    jobs = job_policy(find("permanent-magnets"))["jobs"]
    merge = next(j for j in jobs if j["kind"] == "m2n2_merge")
    assert merge["hub_type"] == "m2n2" and "twin merge waits" in merge["note"]
