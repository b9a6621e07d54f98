"""``factoryops demo --capsule``: a priority capsule end to end (SIMULATED plant -> agent ->
signed proofs -> hub -> report), and every narrative sentence's evidence resolves on the hub."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from attestation.cose import decode_sign1
from attestation.microproof import decode_payload
from capsules.catalogue import find
from capsules.narrative import resolve_link
from cloud_sync.server import HubServer
from cloud_sync.settings import HubSettings

ROOT = Path(__file__).resolve().parents[2]


def _fetch(url: str) -> bytes:
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.content


@pytest.fixture(scope="module")
def ndt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo of the NDT capsule: 30 wall seconds are 120 plant seconds at x4, through the
    flaw fault (60-110 s); returns its workdir."""
    work = tmp_path_factory.mktemp("capsule-demo")
    env = {**os.environ, "COLUMNS": "400"}
    args = ["demo", "--capsule", "quality-ndt", "--duration", "30", "--workdir", str(work)]
    run = subprocess.run(
        [sys.executable, "-m", "factoryops", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "report" in run.stdout
    return work / "capsules" / "quality-ndt"


@pytest.fixture(scope="module")
def report(ndt_run: Path) -> dict[str, Any]:
    return dict(json.loads((ndt_run / "reports" / "quality-ndt" / "report.json").read_text()))


@pytest.fixture(scope="module")
def hub(ndt_run: Path) -> Any:
    """The demo's hub, started again on the data it kept (the demo stops its own at exit)."""
    settings = HubSettings.create(ndt_run / "hub", allow_software_keys=True, open_reads=True)
    server = HubServer(settings).start()
    yield server
    server.stop()


def _section(report: dict[str, Any], source: str) -> Any:
    return next(s["content"] for s in report["sections"] if s["source"] == source)


def test_the_report_is_marked_simulated_and_follows_the_template(report: dict[str, Any]) -> None:
    cap = find("quality-ndt")
    assert report["simulated"] is True
    assert [s["id"] for s in report["sections"]] == [s.id for s in cap.deliverable.sections]
    assert report["capsule"]["sha256"] == cap.digest


def test_every_narrative_link_resolves_against_the_hub(
    report: dict[str, Any], hub: HubServer, ndt_run: Path
) -> None:
    sentences = _section(report, "narrative")
    assert len(sentences) >= 6  # coverage, gaps, a signal per widget signal, ..., checkpoint
    base = ndt_run / "reports" / "quality-ndt"
    for s in sentences:
        assert s["evidence"], s["text"]
        for link in s["evidence"]:
            moved = link.replace(report["hub"], hub.url)  # same data, the hub's new port
            assert resolve_link(moved, _fetch, base) is not None, link


def test_the_figures_of_the_narrative_are_the_hubs(report: dict[str, Any], hub: HubServer) -> None:
    proofs = _section(report, "proofs")
    coverage = proofs["coverage"][0]
    totals = resolve_link(coverage["evidence"][0].replace(report["hub"], hub.url), _fetch)
    assert (coverage["readings"], coverage["windows"]) == (totals["readings"], totals["windows"])
    assert coverage["readings"] > 0 and totals["gap_records"] == 0
    checkpoint = proofs["checkpoint"][0]
    signed = resolve_link(checkpoint["evidence"][0].replace(report["hub"], hub.url), _fetch)
    assert signed["root"] == checkpoint["root"]
    for stat in _section(report, "statistics"):
        cose = resolve_link(stat["evidence"][0].replace(report["hub"], hub.url), _fetch)
        mp = decode_payload(decode_sign1(base64.b64decode(cose), require_tag=True).payload or b"")
        assert mp.window == stat["window"]
        assert mp.stats[stat["signal"]].mean == stat["mean"]


def test_the_flaw_fault_reached_the_hub_as_anomalous_windows(report: dict[str, Any]) -> None:
    found = _section(report, "anomalies")
    assert found["hub"] and found["hub"][0]["anomalous_windows"] > 0
    evaluation = found["detector_evaluation"]["detectors"]
    assert evaluation["either"]["by_fault"]["flaw"] == 1.0  # every seed's flaw episode found


def test_the_feasibility_lists_every_assumption_with_its_basis(report: dict[str, Any]) -> None:
    f = _section(report, "feasibility")
    assert f["npv"]["p10"] <= f["npv"]["p50"] <= f["npv"]["p90"]
    cap = find("quality-ndt")
    names = {a["name"] for a in f["assumptions"]}
    every = [*cap.feasibility.capex, *cap.feasibility.opex_per_year, *cap.feasibility.benefits]
    assert {a.name for a in every} <= names
    assert all(a["kind"] in {"source", "assumption"} and a["basis"] for a in f["assumptions"])
