"""Narratives from measured facts only: every sentence renders a template over computed fields
and carries links to the evidence it rests on.

``HubEvidence`` reads what the hub serves (the site report, receipts, the log checkpoint);
``gather_facts`` turns it into ``Fact`` values, each with the fields its template may use and
the links (URL, optionally ``#`` + a JSON pointer into the document) that hold those fields;
``narrate`` renders the capsule's sentences. A fact the evidence does not support (no
anomalous window, no model) is omitted and the omission is listed: nothing is made up.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from attestation.cose import decode_sign1
from attestation.microproof import MicroProof, decode_payload
from capsules.errors import CapsuleError
from capsules.spec import Capsule

__all__ = [
    "Fact",
    "HubEvidence",
    "Sentence",
    "figure",
    "gather_facts",
    "narrate",
    "resolve_link",
]


@dataclass(frozen=True, slots=True)
class Fact:
    name: str
    fields: Mapping[str, Any]
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sentence:
    fact: str
    text: str
    evidence: tuple[str, ...]


def figure(v: Any) -> Any:
    """Numbers as a reader wants them: integers whole, others to 4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return v
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    if not math.isfinite(v):
        return "not reached"
    return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


@dataclass
class HubEvidence:
    """The hub's read API, as the narrative needs it (every call has a timeout)."""

    url: str
    timeout_s: float = 10.0

    def get_json(self, path: str) -> Any:
        try:
            r = httpx.get(f"{self.url}{path}", timeout=self.timeout_s)
            r.raise_for_status()
        except httpx.HTTPError as err:
            raise CapsuleError(
                f"the hub at {self.url} did not answer {path}: {err}",
                hint="is the hub running, and are its reads open to this caller?",
            ) from err
        return r.json()

    def report_path(self, site: str, start: str, end: str) -> str:
        return f"/v1/sites/{site}/report?" + urlencode({"from": start, "to": end})

    def receipt_path(self, utid: str, seq: int) -> str:
        return f"/v1/devices/{utid}/readings/{seq}/receipt"

    def microproof(self, utid: str, seq: int) -> MicroProof:
        receipt = self.get_json(self.receipt_path(utid, seq))
        cose = base64.b64decode(receipt["microproof"])
        return decode_payload(decode_sign1(cose, require_tag=True).payload or b"")

    def first_seq_of_window(self, utid: str, window: int, last_seq: int) -> int:
        """The first seq of ``window``: a binary search over receipts (windows grow with seq)."""
        lo, hi = 0, last_seq
        while lo <= hi:
            mid = (lo + hi) // 2
            mp = self.microproof(utid, mid)
            if mp.window == window:
                return mp.first_seq
            lo, hi = (mid + 1, hi) if mp.window < window else (lo, mid - 1)
        raise CapsuleError(f"window {window} of {utid} holds no stored reading")


def gather_facts(
    hub: HubEvidence,
    cap: Capsule,
    utid: str,
    start: str,
    end: str,
    feasibility: tuple[str, Mapping[str, Any]] | None = None,
) -> dict[str, list[Fact]]:
    """Every fact the evidence supports: name -> facts (``signal`` has one per widget signal).

    ``feasibility`` is (link to the written feasibility JSON, its content).
    """
    device = hub.get_json(f"/v1/devices/{utid}")
    site = device["site"]
    rpath = hub.report_path(site, start, end)
    report = hub.get_json(rpath)
    rurl = f"{hub.url}{rpath}"
    i = next(n for n, d in enumerate(report["devices"]) if d["utid"] == utid)
    dev = report["devices"][i]
    tot = report["totals"]
    facts: dict[str, list[Fact]] = {
        "coverage": [
            Fact(
                "coverage",
                {
                    "readings": tot["readings"],
                    "windows": tot["windows"],
                    "devices": tot["devices"],
                    "coverage_pct": dev["coverage_pct"],
                    "start": report["from"],
                    "end": report["to"],
                },
                (f"{rurl}#/totals", f"{rurl}#/devices/{i}/coverage_pct"),
            )
        ],
        "gaps": [
            Fact(
                "gaps",
                {"gap_records": tot["gap_records"], "readings_lost": tot["readings_lost"]},
                (f"{rurl}#/totals/gap_records", f"{rurl}#/devices/{i}/gaps"),
            )
        ],
        "drift": [
            Fact(
                "drift",
                {
                    "drift_tests": len(dev["drift_tests"]),
                    "drifted_windows": dev["drifted_windows"],
                },
                (f"{rurl}#/devices/{i}/drift_tests", f"{rurl}#/devices/{i}/drifted_windows"),
            )
        ],
        "checkpoint": [
            Fact(
                "checkpoint",
                {"size": report["checkpoint"]["size"], "root": report["checkpoint"]["root"]},
                (f"{rurl}#/checkpoint", f"{hub.url}/v1/log/checkpoint"),
            )
        ],
    }
    if dev["models"]:
        m = dev["models"][0]
        facts["model"] = [
            Fact(
                "model",
                {"model_id": m["id"], "model_sha256": m["sha256"]},
                (f"{rurl}#/devices/{i}/models/0",),
            )
        ]
    # the statistics shown are those of the most anomalous window (else the last one)
    window = dev["last_window"]
    if dev["anomalies"]:
        first = dev["anomalies"][0]
        window = max(dev["anomalies"], key=lambda a: a["max_score"])["window"]
        seq = hub.first_seq_of_window(utid, first["window"], int(device["last_seq"]))
        facts["anomalies"] = [
            Fact(
                "anomalies",
                {
                    "anomalous_windows": len(dev["anomalies"]),
                    "first_at": first["at"],
                    "window": first["window"],
                    "max_score": max(a["max_score"] for a in dev["anomalies"]),
                    "threshold": first["threshold"],
                },
                (
                    f"{rurl}#/devices/{i}/anomalies",
                    f"{hub.url}{hub.receipt_path(utid, seq)}#/microproof",
                ),
            )
        ]
    if window is not None:
        seq = hub.first_seq_of_window(utid, window, int(device["last_seq"]))
        mp = hub.microproof(utid, seq)
        link = f"{hub.url}{hub.receipt_path(utid, seq)}#/microproof"
        facts["signal"] = [
            Fact(
                "signal",
                {
                    "signal": name,
                    "unit": cap.signal(name).unit,
                    "window": window,
                    "n": mp.stats[name].n,
                    "mean": mp.stats[name].mean,
                    "min": mp.stats[name].min,
                    "max": mp.stats[name].max,
                },
                (link,),
            )
            for name in cap.deliverable.widget_signals
            if name in mp.stats
        ]
    if feasibility is not None:
        link, f = feasibility
        facts["feasibility"] = [
            Fact(
                "feasibility",
                {
                    "currency": f["currency"],
                    "runs": f["runs"],
                    "npv_p10": f["npv"]["p10"],
                    "npv_p50": f["npv"]["p50"],
                    "npv_p90": f["npv"]["p90"],
                    "payback_p50_years": f["payback_years"]["p50"],
                },
                (f"{link}#/npv", f"{link}#/payback_years", f"{link}#/assumptions"),
            )
        ]
    return facts


def narrate(cap: Capsule, facts: Mapping[str, Sequence[Fact]]) -> tuple[list[Sentence], list[str]]:
    """The capsule's sentences over the facts; and the facts omitted for lack of evidence."""
    out, omitted = [], []
    for tmpl in cap.deliverable.narrative:
        found = facts.get(tmpl.fact, ())
        if not found:
            omitted.append(tmpl.fact)
            continue
        for fact in found:
            text = tmpl.text.format(**{k: figure(v) for k, v in fact.fields.items()})
            out.append(Sentence(fact.name, text, fact.evidence))
    return out, omitted


def resolve_link(link: str, fetch: Callable[[str], bytes], base: Path | None = None) -> Any:
    """The value a link points at: the document (HTTP, or a file under ``base``), then the
    JSON pointer after ``#`` (RFC 6901). Raises ``CapsuleError`` when it does not resolve."""
    where, _, pointer = link.partition("#")
    if where.startswith(("http://", "https://")):
        body = fetch(where)
    else:
        if base is None:
            raise CapsuleError(f"{link}: a local link needs a base folder")
        body = (base / where).read_bytes()
    if not pointer:
        return body
    doc: Any = json.loads(body)
    for raw in pointer.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        try:
            doc = doc[int(token)] if isinstance(doc, list) else doc[token]
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise CapsuleError(f"{link}: pointer {pointer} does not resolve at {token!r}") from err
    return doc
