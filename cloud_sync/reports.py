"""Proof reports: the facts of a site over a period, as JSON, and the same facts as a PDF.

``site_report`` gathers the facts once (``Report``, a plain JSON-able dict); ``render_pdf``
only draws that dict, so the PDF can never say something the JSON does not. Every number
comes from what the hub stored and the signed micro-proofs themselves (gap records,
anomaly summaries, model hashes and drift tests are read from the signed payloads), and the
report names the log checkpoint it rests on, so an auditor can check any window in it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

from attestation.cose import decode_sign1
from attestation.microproof import decode_payload
from attestation.reportsig import report_bytes, sign_report
from attestation.signers.base import Signer
from cloud_sync.errors import ApiError
from cloud_sync.log import HubLog
from cloud_sync.storage import Store

__all__ = ["Report", "SignedReport", "parse_period", "render_pdf", "sign", "site_report"]

Report = dict[str, Any]
MAX_PERIOD = dt.timedelta(days=366)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LAST_NS_TIME = dt.datetime(2262, 4, 11, tzinfo=dt.UTC)  # int64 nanoseconds end 2262-04-11


def parse_period(start: str, end: str) -> tuple[dt.datetime, dt.datetime]:
    """ISO 8601 ``from``/``to`` (UTC when no offset); names the bad parameter."""
    out = []
    for name, text in (("from", start), ("to", end)):
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError as err:
            raise ApiError(
                422, "invalid_request", f"{name}: {text[:40]!r} is not ISO 8601"
            ) from err
        stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
        if not EPOCH <= stamp <= LAST_NS_TIME:  # times are stored as int64 Unix nanoseconds
            raise ApiError(
                422, "invalid_request", f"{name}: must be between 1970 and {LAST_NS_TIME:%Y-%m-%d}"
            )
        out.append(stamp)
    if out[0] >= out[1]:
        raise ApiError(422, "invalid_request", "from: must be before to")
    if out[1] - out[0] > MAX_PERIOD:
        raise ApiError(422, "invalid_request", "to: a report covers at most 366 days")
    return out[0], out[1]


def _ns(stamp: dt.datetime) -> int:
    return int(stamp.timestamp() * 1e9)


def _iso(ns: int, timespec: str = "seconds") -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec=timespec)


def site_report(
    store: Store, log: HubLog, site: str, start: dt.datetime, end: dt.datetime, now_ns: int
) -> Report:
    lo, hi = _ns(start), _ns(end)
    devs, rows = store.site_windows(site, lo, hi)
    if not devs:
        raise ApiError(404, "unknown_site", f"no device belongs to site {site!r}")
    cp, note = log.checkpoint()
    by_device: dict[str, list[Any]] = {}
    for w in rows:
        by_device.setdefault(w.utid, []).append(w)
    out_devices = [_device_facts(d, by_device.get(d.utid, []), lo, hi) for d in devs]
    return {
        "site": site,
        "from": start.isoformat(timespec="seconds"),
        "to": end.isoformat(timespec="seconds"),
        "generated_at": _iso(now_ns),
        "checkpoint": {
            "origin": cp.origin,
            "size": cp.size,
            "root": cp.root.hex(),
            "note": note,
        },
        "totals": {
            "devices": len(out_devices),
            "windows": sum(d["windows"] for d in out_devices),
            "readings": sum(d["readings"] for d in out_devices),
            "gap_records": sum(len(d["gaps"]) for d in out_devices),
            "readings_lost": sum(
                g["last"] - g["first"] + 1 for d in out_devices for g in d["gaps"]
            ),
            "anomalous_windows": sum(len(d["anomalies"]) for d in out_devices),
            "source_gaps": sum(len(d["source_gaps"]) for d in out_devices),
        },
        "devices": out_devices,
    }


def _device_facts(d: Any, rows: list[Any], lo: int, hi: int) -> dict[str, Any]:
    gaps, silences, anomalies, drift, models = [], [], [], [], {}
    per_hour: Counter[str] = Counter()
    covered = 0
    for w in rows:
        mp = decode_payload(decode_sign1(w.cose, require_tag=True).payload or b"")
        gaps += [
            {"window": w.window, "first": g.first, "last": g.last, "reason": g.reason}
            for g in mp.gaps
        ]
        silences += [
            {
                "window": w.window,
                "source": g.source,
                "from": _iso(g.first_ts_ns, "milliseconds"),
                "to": _iso(g.last_ts_ns, "milliseconds"),
                "first_ts_ns": g.first_ts_ns,
                "last_ts_ns": g.last_ts_ns,
                "reason": g.reason,
            }
            for g in mp.source_gaps
        ]
        if mp.model is not None:
            models[mp.model.sha256.hex()] = {
                "id": mp.model.id,
                "version": mp.model.version,
                "fleet_version": mp.model.fleet_version,  # set when a TUF fleet model scored
                "job": mp.model.job,
            }
        if mp.anomaly is not None and mp.anomaly.count:
            anomalies.append(
                {
                    "window": w.window,
                    "at": _iso(w.first_ts_ns),
                    "anomalous_rows": mp.anomaly.count,
                    "max_score": round(mp.anomaly.max_score, 4),
                    "threshold": mp.anomaly.threshold,
                    "model_sha256": mp.model.sha256.hex() if mp.model else None,
                    "fleet_version": mp.model.fleet_version if mp.model else None,
                }
            )
        if mp.drift is not None:
            drift.append(
                {
                    "window": w.window,
                    "test": mp.drift.test,
                    "statistic": round(mp.drift.statistic, 6),
                    "p_value": round(mp.drift.p_value, 6),
                    "drifted": mp.drift.drifted,
                }
            )
        covered += max(0, min(w.last_ts_ns, hi) - max(w.first_ts_ns, lo))
        per_hour[_iso(w.first_ts_ns)[:13] + ":00"] += w.count
    return {
        "utid": d.utid,
        "name": d.name,
        "key_kind": d.key_kind,
        "revoked": bool(d.revoked),
        "windows": len(rows),
        "readings": sum(w.count for w in rows),
        "first_window": rows[0].window if rows else None,
        "last_window": rows[-1].window if rows else None,
        "coverage_pct": round(100 * covered / (hi - lo), 3),
        "gaps": gaps,
        "source_gaps": silences,
        "anomalies": anomalies,
        "drift_tests": drift,
        "drifted_windows": sum(x["drifted"] for x in drift),
        "models": [{"sha256": k, **v} for k, v in sorted(models.items())],
        "readings_per_hour": sorted(per_hour.items()),
    }


@dataclass(frozen=True, slots=True)
class SignedReport:
    """A report's facts as the one JSON byte form, the hub's detached COSE signature on those
    bytes, and their SHA-256 (printed on the PDF)."""

    json: bytes
    cose: bytes
    sha256: str

    def bundle(self, pdf: bytes) -> bytes:
        """A zip an auditor keeps: the PDF, its JSON twin, the signature, how to check."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("report.pdf", pdf)
            z.writestr("report.json", self.json)
            z.writestr("report.json.cose", self.cose)
            z.writestr("HOW-TO-CHECK.txt", HOW_TO_CHECK.format(sha256=self.sha256))
        return buf.getvalue()


HOW_TO_CHECK = """\
report.json is this report's facts; report.pdf is drawn from them alone.
report.json.cose is the hub's signature on report.json (COSE_Sign1, EdDSA, payload detached).

  factoryops verify-report report.json --trust hub-log-key.pem

prints VALID and the SHA-256 of report.json, which must be
{sha256}
as printed on the PDF's cover. hub-log-key.pem comes from the hub's operator.
"""


def sign(report: Report, signer: Signer) -> SignedReport:
    data = report_bytes(report)
    return SignedReport(data, sign_report(data, signer), hashlib.sha256(data).hexdigest())


def render_pdf(report: Report, twin_sha256: str) -> bytes:
    """The report as a PDF (cloud_sync/report_pdf.py; reportlab is loaded only here)."""
    from cloud_sync.report_pdf import render_pdf as draw  # noqa: PLC0415 - reportlab is heavy

    return draw(report, twin_sha256)
