"""The pilot sandbox's work, apart from its page: read a plant's CSV, fit and run a model on
it, sign its rows as micro-proofs with a pilot key, send them to a hub, fetch and check
receipts, and gather it all into one exportable result.

Every step is a plain function so the Streamlit page (``pilot_app.py``) only lays them out,
and tests call them directly. The pilot signs with a SOFTWARE key made for the session (a
sandbox: the hub must allow software keys); a gateway signs with its TPM.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from agent.sealer import seal
from agent.spool import OutboxItem
from agent.uplink import encode_upload, register_device
from agent.window import ClosedWindow
from attestation import load_anchors, receipt_from_json, report_receipt
from attestation.errors import Fixable
from attestation.microproof import GENESIS_PREV
from attestation.reading import Reading
from attestation.signers.software import SoftwareSigner
from models_onnx.datasets import Table, read_table
from models_onnx.manifest import load_model
from models_onnx.recipes import Recipe, build
from models_onnx.scoring import ewma

__all__ = [
    "PilotError",
    "PilotHub",
    "ProofRun",
    "Scores",
    "anomaly_events",
    "check_receipt",
    "read_csv",
    "run_model",
    "send_proofs",
]

F = NDArray[np.float64]
MAX_UPLOAD_BYTES = 50 << 20  # a pilot CSV; a year of data belongs in `factoryops model eval`
MIN_TRAIN_ROWS = 50  # fewer normal rows than this cannot fit a twin with lags
WINDOW_ROWS = 100  # CSV rows per signed window (rows x signals readings)
PROOFS_PER_POST = 32  # as the agent batches them


class PilotError(Fixable):
    """A pilot step that cannot go on; the message says what, the hint how to fix it."""


def read_csv(data: bytes, name: str) -> Table:
    """A plant CSV (``;`` or ``,``, an optional time and label column, numeric signals)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise PilotError(
            f"{name}: {len(data):,} bytes, the pilot takes up to {MAX_UPLOAD_BYTES:,}",
            hint="cut the file, or evaluate it with `factoryops model eval --dataset DIR`",
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        try:
            return read_table(path)
        except Fixable as err:
            raise PilotError(str(err).replace(str(path), name), hint=err.hint) from err


@dataclass(frozen=True, slots=True)
class Scores:
    """A model's verdict on every row: ``score`` is the smoothed score over its limit (an
    alarm above 1), the model fitted on the first ``train_rows`` rows only."""

    manifest: Path
    sha256: str
    score: F
    alarms: NDArray[np.bool_]
    train_rows: int

    @property
    def anomalous_rows(self) -> int:
        return int(self.alarms[self.train_rows :].sum())


def run_model(table: Table, signals: Sequence[str], train_fraction: float, workdir: Path) -> Scores:
    """Fit the shipped recipe on the first rows (taken as normal), score every row (int8)."""
    cols = [table.signals.index(s) for s in signals]
    if not cols:
        raise PilotError("no signal chosen", hint="pick at least one numeric column")
    x = table.values[:, cols]
    train_rows = int(len(x) * train_fraction)
    if train_rows < MIN_TRAIN_ROWS:
        raise PilotError(
            f"{train_rows} training rows ({train_fraction:.0%} of {len(x):,}); "
            f"at least {MIN_TRAIN_ROWS} are needed",
            hint="use a longer file or a larger training share",
        )
    model_id = "pilot-" + hashlib.sha256(x.tobytes()).hexdigest()[:12]
    _, int8 = build(Recipe(), x[:train_rows], list(signals), workdir, model_id=model_id)
    model = load_model(int8)
    smoothed = ewma(model.score_rows(x).astype(np.float64), model.manifest.smoothing_span)
    score = smoothed / model.manifest.threshold
    return Scores(int8, model.manifest.sha256, score, score > 1.0, train_rows)


def anomaly_events(scores: Scores) -> list[dict[str, Any]]:
    """Contiguous alarmed rows after training as events: first row, last row, peak."""
    events: list[dict[str, Any]] = []
    start: int | None = None
    flags = [*scores.alarms.tolist(), False]
    for i in range(scores.train_rows, len(flags)):
        if flags[i] and start is None:
            start = i
        elif not flags[i] and start is not None:
            peak = float(scores.score[start:i].max())
            events.append({"first_row": start, "last_row": i - 1, "peak": round(peak, 3)})
            start = None
    return events


@dataclass(frozen=True, slots=True)
class PilotHub:
    """Where the pilot sends its proofs, and the credentials it needs there."""

    url: str
    admin_token: str  # registers the pilot's software key (POST /v1/devices)
    api_key: str | None = None  # reads receipts on a hub without --open-reads
    timeout_s: float = 30.0

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True, slots=True)
class ProofRun:
    """What the hub accepted: the pilot device and each row's first reading's seq."""

    utid: str
    windows: int
    readings: int
    state_dir: Path
    row_seqs: tuple[int, ...] = field(repr=False)


def _readings(table: Table, signals: Sequence[str], units: dict[str, str]) -> list[Reading]:
    cols = [table.signals.index(s) for s in signals]
    now = time.time_ns()
    n = len(table.values)
    if table.timestamps is not None:
        stamps = [int(t * 1e9) for t in table.timestamps]
    else:  # no time column: one row a second, ending now
        stamps = [now - (n - 1 - i) * 1_000_000_000 for i in range(n)]
    out: list[Reading] = []
    for i in range(n):
        for s, c in zip(signals, cols, strict=True):
            seq = len(out)
            out.append(Reading(seq, stamps[i], s, float(table.values[i, c]), units.get(s, ""), 0))
    return out


def send_proofs(
    table: Table,
    signals: Sequence[str],
    units: dict[str, str],
    hub: PilotHub,
    state_dir: Path,
    *,
    name: str = "pilot",
) -> ProofRun:
    """Sign the rows as windows of ``WINDOW_ROWS`` rows with a new pilot key, register it,
    upload, and return where each row's readings start."""
    signer = SoftwareSigner.generate()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        utid = register_device(
            hub.url, hub.admin_token, signer, name=name, state_dir=state_dir, timeout_s=10
        )
    except Fixable as err:
        raise PilotError(f"the hub refused the pilot's key: {err}", hint=err.hint) from err
    readings = _readings(table, signals, units)
    per_window = WINDOW_ROWS * len(signals)
    items, prev = [], GENESIS_PREV
    for index, start in enumerate(range(0, len(readings), per_window)):
        window = ClosedWindow(tuple(readings[start : start + per_window]))
        sealed = seal(window, index=index, prev=prev, signer=signer, iat=int(time.time()))
        items.append(OutboxItem(index, sealed.cose, window.readings))
        prev = sealed.chain_hash
    with httpx.Client(timeout=hub.timeout_s) as client:
        for k in range(0, len(items), PROOFS_PER_POST):
            body = encode_upload(items[k : k + PROOFS_PER_POST])
            r = client.post(
                f"{hub.url}/v1/proofs", content=body, headers={"content-type": "application/cbor"}
            )
            if r.status_code != 200:
                raise PilotError(
                    f"the hub refused the upload ({r.status_code}): {r.text[:300]}",
                    hint="see docs/protocol.md for the error code",
                )
    row_seqs = tuple(range(0, len(readings), len(signals)))
    return ProofRun(utid, len(items), len(readings), state_dir, row_seqs)


def receipt(hub: PilotHub, utid: str, seq: int) -> dict[str, Any]:
    """The hub's receipt of one reading (JSON, as `factoryops verify` reads it)."""
    r = httpx.get(
        f"{hub.url}/v1/devices/{utid}/readings/{seq}/receipt",
        headers=hub.headers(),
        timeout=hub.timeout_s,
    )
    if r.status_code != 200:
        raise PilotError(
            f"no receipt for seq {seq} ({r.status_code}): {r.text[:300]}",
            hint="on a hub without --open-reads pass an operator's --api-key",
        )
    doc: dict[str, Any] = r.json()
    return doc


def check_receipt(doc: dict[str, Any], hub: PilotHub, state_dir: Path) -> tuple[bool, str]:
    """Check a receipt offline against the fleet CA the hub gave at registration and the
    hub's log key (fetched from the hub: a sandbox trusts it on first use; an auditor pins it
    from the hub's operator, docs/verify.md)."""
    key = httpx.get(f"{hub.url}/v1/log/key", timeout=hub.timeout_s).json()
    log_key = state_dir / "hub-log-key.pem"
    log_key.write_text(key["pem"], encoding="ascii")
    anchors = load_anchors([state_dir / "fleet-ca.pem", log_key])
    verdict = report_receipt(receipt_from_json(doc), anchors)
    text = json.dumps(verdict.as_json())
    return verdict.valid, text
