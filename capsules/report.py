"""The capsule's deliverable: its template filled from the hub's evidence, as JSON and Markdown.

Sections take their content from the source the template names (proofs, statistics,
anomalies, drift, feasibility, narrative); the Markdown is drawn only from the JSON, so it can
say nothing the JSON does not. The SIMULATED origin of a demo's data is stated at the top.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attestation.durable import write_atomically
from capsules.narrative import Fact, Sentence, figure
from capsules.spec import Capsule

__all__ = ["build_report", "render_markdown", "write_report"]


def build_report(
    cap: Capsule,
    *,
    hub_url: str,
    utid: str,
    facts: Mapping[str, Sequence[Fact]],
    sentences: Sequence[Sentence],
    omitted: Sequence[str],
    evaluation: Mapping[str, Any] | None,
    feasibility: Mapping[str, Any] | None,
    simulated: bool,
) -> dict[str, Any]:
    def fields(name: str) -> list[dict[str, Any]]:
        return [{**f.fields, "evidence": list(f.evidence)} for f in facts.get(name, ())]

    content: dict[str, Any] = {
        "proofs": {n: fields(n) for n in ("coverage", "gaps", "checkpoint", "model")},
        "statistics": fields("signal"),
        "anomalies": {"hub": fields("anomalies"), "detector_evaluation": evaluation},
        "drift": fields("drift"),
        "feasibility": feasibility,
        "narrative": [
            {"fact": s.fact, "text": s.text, "evidence": list(s.evidence)} for s in sentences
        ],
    }
    d = cap.deliverable
    return {
        "title": d.title,
        "capsule": {"name": cap.name, "version": cap.version, "sha256": cap.digest},
        "area": {"number": cap.area, "name": cap.area_name},
        "simulated": simulated,
        "hub": hub_url,
        "utid": utid,
        "widget": {"kind": d.widget_kind, "signals": list(d.widget_signals)},
        "sections": [
            {"id": s.id, "title": s.title, "source": s.source, "content": content[s.source]}
            for s in d.sections
        ],
        "omitted_facts": list(omitted),
    }


def _links(evidence: Sequence[str]) -> str:
    return " ".join(f"[[{n + 1}]]({url})" for n, url in enumerate(evidence))


def _table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(figure(r.get(k, ""))) for k in keys) + " |" for r in rows]
    return out


def _section(source: str, content: Any) -> list[str]:
    if source == "narrative":
        return [f"- {s['text']} {_links(s['evidence'])}" for s in content]
    if source == "statistics":
        return _table(content, ("signal", "unit", "window", "n", "mean", "min", "max"))
    if source == "proofs":
        return [
            f"- {name}: "
            + ", ".join(f"{k} {v}" for k, v in f.items() if k != "evidence")
            + f" {_links(f['evidence'])}"
            for name, items in content.items()
            for f in items
        ]
    if source == "anomalies":
        lines = [
            f"- hub: {a['anomalous_windows']} anomalous window(s), first at {a['first_at']}"
            f" {_links(a['evidence'])}"
            for a in content["hub"]
        ] or ["- hub: no window reported anomalous rows"]
        ev = content["detector_evaluation"]
        if ev:
            lines += ["", f"Detectors on the SIMULATED faults ({len(ev['seeds'])} seeds):", ""]
            rows = [
                {
                    "detector": k,
                    "detected": f"{v['detected']}/{v['episodes']}",
                    "median delay s": v["median_delay_s"],
                    "false alarms/h": v["false_alarms_per_h"],
                    **{f"found {kind}": f"{share:.0%}" for kind, share in v["by_fault"].items()},
                }
                for k, v in ev["detectors"].items()
            ]
            lines += _table(rows, list(rows[0]))
        return lines
    if source == "drift":
        return [
            f"- {f['drift_tests']} drift test(s), {f['drifted_windows']} drifted window(s)"
            f" {_links(f['evidence'])}"
            for f in content
        ]
    if source == "feasibility":
        if not content:
            return ["- no feasibility model in this capsule"]
        c = content["currency"]
        lines = [
            f"- NPV ({content['runs']:,} Monte Carlo runs): P10 {content['npv']['p10']:,.0f} {c},"
            f" P50 {content['npv']['p50']:,.0f} {c}, P90 {content['npv']['p90']:,.0f} {c}",
            f"- payback in years: P10 {content['payback_years']['p10']},"
            f" P50 {content['payback_years']['p50']}, P90 {content['payback_years']['p90']}",
            "",
            "Every assumption (kind: source or assumption):",
            "",
        ]
        return lines + _table(
            content["assumptions"], ("part", "name", "low", "mode", "high", "kind", "basis")
        )
    return [f"```\n{json.dumps(content, indent=1)}\n```"]


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# {report['title']}", ""]
    if report["simulated"]:
        lines += [
            "> SIMULATED: the plant behind these proofs is a simulator, not real equipment.",
            "",
        ]
    cap = report["capsule"]
    lines += [
        f"Capsule {cap['name']} {cap['version']} (area {report['area']['number']}:"
        f" {report['area']['name']}), gateway `{report['utid']}`, hub {report['hub']}.",
        f"Widget: {report['widget']['kind']} of {', '.join(report['widget']['signals'])}.",
        "",
    ]
    for s in report["sections"]:
        lines += [f"## {s['title']}", "", *_section(s["source"], s["content"]), ""]
    if report["omitted_facts"]:
        lines += [
            "Omitted for lack of evidence: " + ", ".join(report["omitted_facts"]) + ".",
            "",
        ]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / "report.json", out_dir / "report.md"
    write_atomically(j, (json.dumps(report, indent=2) + "\n").encode())
    write_atomically(m, render_markdown(report).encode())
    return j, m
