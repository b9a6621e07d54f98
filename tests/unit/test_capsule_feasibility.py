"""OBMI feasibility and narratives: distributions from listed assumptions, sentences from facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsules.catalogue import find
from capsules.errors import CapsuleError
from capsules.feasibility import monte_carlo
from capsules.narrative import Fact, figure, narrate, resolve_link


def test_the_monte_carlo_gives_ordered_percentiles_and_lists_every_assumption() -> None:
    cap = find("permanent-magnets")
    r = monte_carlo(
        cap.feasibility,
        {"detection_rate": [1.0, 0.8], "false_alarms_per_h": [0.0, 0.2]},
        runs=2000,
        seed=1,
    )
    assert r.npv[0] <= r.npv[1] <= r.npv[2]
    listed = {a["name"] for a in r.assumptions}
    assert {a.name for a in cap.feasibility.benefits} <= listed
    assert all(a["kind"] == "assumption" for a in r.assumptions)  # every figure is marked


def test_a_twin_that_finds_nothing_earns_only_the_unscaled_benefits() -> None:
    cap = find("permanent-magnets")
    found = monte_carlo(
        cap.feasibility, {"detection_rate": [1.0], "false_alarms_per_h": [0.0]}, runs=2000, seed=1
    )
    blind = monte_carlo(
        cap.feasibility, {"detection_rate": [0.0], "false_alarms_per_h": [0.0]}, runs=2000, seed=1
    )
    assert blind.npv[1] < 0 < found.npv[1]


def test_the_same_seed_gives_the_same_distribution() -> None:
    cap = find("quality-ndt")
    a = monte_carlo(
        cap.feasibility, {"detection_rate": [0.9], "false_alarms_per_h": [0.1]}, runs=500, seed=7
    )
    b = monte_carlo(
        cap.feasibility, {"detection_rate": [0.9], "false_alarms_per_h": [0.1]}, runs=500, seed=7
    )
    assert a.as_json() == b.as_json()


def test_a_benefit_without_its_twin_outcome_is_refused() -> None:
    cap = find("quality-ndt")
    with pytest.raises(ValueError, match="detection_rate"):
        monte_carlo(cap.feasibility, {"false_alarms_per_h": [0.0]}, runs=10)


def test_false_alarms_cost_what_the_twin_measured() -> None:
    cap = find("quality-ndt")
    quiet = monte_carlo(
        cap.feasibility, {"detection_rate": [1.0], "false_alarms_per_h": [0.0]}, runs=2000
    )
    noisy = monte_carlo(
        cap.feasibility, {"detection_rate": [1.0], "false_alarms_per_h": [5.0]}, runs=2000
    )
    assert noisy.npv[1] < quiet.npv[1]


def test_a_fact_without_evidence_is_omitted_not_invented() -> None:
    cap = find("forming")
    facts = {
        "coverage": [
            Fact(
                "coverage",
                {
                    "readings": 1200,
                    "windows": 4,
                    "devices": 1,
                    "coverage_pct": 99.5,
                    "start": "a",
                    "end": "b",
                },
                ("http://hub/x#/totals",),
            )
        ]
    }
    sentences, omitted = narrate(cap, facts)
    assert [s.text for s in sentences] == [
        "1,200 readings in 4 signed windows from 1 gateway(s) between a and b."
    ]
    assert sentences[0].evidence == ("http://hub/x#/totals",)
    assert set(omitted) == {"gaps", "anomalies", "checkpoint"}


@pytest.mark.parametrize(
    ("value", "shown"),
    [(3, "3"), (3.0, "3"), (1234567, "1,234,567"), (0.123456, "0.1235"), (98765.4, "98,765")],
)
def test_figures_are_printed_as_computed(value: float, shown: str) -> None:
    assert figure(value) == shown


def test_a_link_resolves_to_the_value_its_pointer_names(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text(json.dumps({"npv": {"p50": 5}, "a/b": [1, 2]}))
    assert resolve_link("f.json#/npv/p50", lambda u: b"", tmp_path) == 5
    assert resolve_link("f.json#/a~1b/1", lambda u: b"", tmp_path) == 2
    assert resolve_link("http://h/r#/x", lambda u: b'{"x": 1}') == 1
    with pytest.raises(CapsuleError, match="does not resolve"):
        resolve_link("f.json#/npv/p99", lambda u: b"", tmp_path)


def test_every_capsule_has_a_feasibility_model_whose_figures_are_marked() -> None:
    from capsules.catalogue import catalogue

    for cap in catalogue():
        f = cap.feasibility
        items = [*f.capex, *f.opex_per_year, *f.benefits]
        assert items and all(a.basis for a in items), cap.name
        assert any(a.twin == "detection_rate" for a in f.benefits), cap.name
        assert any(a.twin == "false_alarms_per_h" for a in f.opex_per_year), cap.name


def test_the_feasibility_command_runs_on_a_generic_capsule(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from factoryops.cli import cli

    r = CliRunner().invoke(
        cli,
        ["capsule", "feasibility", "chemical-pharma", "--seeds", "2", "--runs", "500",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "chemical-pharma.json").read_text())
    assert doc["evaluation"]["simulated"] is True
    assert doc["feasibility"]["npv"]["p10"] <= doc["feasibility"]["npv"]["p90"]
