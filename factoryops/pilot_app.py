"""The pilot sandbox page (Streamlit): a plant's CSV -> columns -> model -> anomalies ->
signed micro-proofs at a hub -> receipts checked offline -> an exported pilot report.

Run it with ``factoryops pilot --hub URL`` (which starts ``streamlit run`` on this file);
the work itself is in ``pilot_core.py``. Settings come from the environment the command
sets: FACTORYOPS_PILOT_HUB, FACTORYOPS_PILOT_ADMIN_TOKEN, FACTORYOPS_API_KEY,
FACTORYOPS_PILOT_DIR.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

from attestation.errors import Fixable
from factoryops.pilot_core import (
    PilotHub,
    ProofRun,
    Scores,
    anomaly_events,
    check_receipt,
    read_csv,
    receipt,
    run_model,
    send_proofs,
)
from models_onnx.datasets import Table

MAX_DEFAULT_SIGNALS = 16  # preselected columns; a user may pick more


def vars_of(obj: Any) -> dict[str, Any]:
    """A frozen slotted dataclass's fields as a dict (``vars`` needs a ``__dict__``)."""
    return {name: getattr(obj, name) for name in obj.__slots__}


def _hub() -> PilotHub | None:
    url = os.environ.get("FACTORYOPS_PILOT_HUB", "").rstrip("/")
    if not url:
        return None
    return PilotHub(
        url,
        os.environ.get("FACTORYOPS_PILOT_ADMIN_TOKEN", ""),
        os.environ.get("FACTORYOPS_API_KEY") or None,
    )


def _workdir() -> Path:
    if "workdir" not in st.session_state:
        base = os.environ.get("FACTORYOPS_PILOT_DIR") or tempfile.mkdtemp(prefix="fo-pilot-")
        st.session_state.workdir = str(base)
    return Path(st.session_state.workdir)


def _fail(err: Fixable) -> None:
    st.error(f"{err}" + (f"\n\nHow to fix it: {err.hint}" if err.hint else ""))


def _load_data() -> tuple[Table, str, bytes] | None:
    st.header("1. Plant data")
    upload = st.file_uploader("A CSV of plant data (`;` or `,`, one header row)", type=["csv"])
    path = st.text_input("…or the path of a CSV on this machine", key="csv_path")
    if upload is not None:
        name, data = upload.name, upload.getvalue()
    elif path:
        try:
            name, data = Path(path).name, Path(path).read_bytes()
        except OSError as err:
            st.error(f"cannot read {path}: {err.strerror}")
            return None
    else:
        st.info("Upload a CSV or give its path to begin.")
        return None
    try:
        table = read_csv(data, name)
    except Fixable as err:
        _fail(err)
        return None
    labels = (
        "" if table.labels is None else f", {int(table.labels.sum()):,} rows labelled anomalous"
    )
    st.success(
        f"{name}: {len(table.values):,} rows, {len(table.signals)} numeric columns"
        + (", with a time column" if table.timestamps is not None else ", no time column")
        + labels
    )
    return table, name, data


def _columns(table: Table) -> tuple[list[str], dict[str, str]]:
    st.header("2. Columns")
    signals = st.multiselect(
        "Signals to model and sign",
        list(table.signals),
        default=list(table.signals[:MAX_DEFAULT_SIGNALS]),
        key="signals",
    )
    units: dict[str, str] = {}
    with st.expander("Units (written into every signed reading)"):
        for s in signals:
            units[s] = st.text_input(f"unit of {s}", key=f"unit:{s}")
    return signals, units


def _model(table: Table, signals: list[str]) -> Scores | None:
    st.header("3. Model")
    frac = st.slider(
        "Share of the first rows taken as normal operation (the model learns from these only)",
        0.1,
        0.9,
        0.3,
        0.05,
        key="train_fraction",
    )
    if st.button("Run the model", key="run_model"):
        try:
            st.session_state.scores = run_model(table, signals, frac, _workdir() / "model")
        except Fixable as err:
            _fail(err)
    scores: Scores | None = st.session_state.get("scores")
    if scores is None:
        return None
    events = anomaly_events(scores)
    left, mid, right = st.columns(3)
    left.metric("Anomalous rows after training", f"{scores.anomalous_rows:,}")
    mid.metric("Anomaly events", f"{len(events):,}")
    right.metric("Model (int8 ONNX) sha256", scores.sha256[:12] + "…")
    st.caption("Score over its limit per row: above 1.0 is an alarm; rows before the line "
               f"at row {scores.train_rows:,} trained the model.")  # fmt: skip
    st.line_chart({"score / limit": scores.score.tolist(), "limit": [1.0] * len(scores.score)})
    if table.labels is not None:
        after = slice(scores.train_rows, None)
        hit = int((scores.alarms[after] & table.labels[after]).sum())
        st.write(
            f"Labels in the file: the model flagged {hit:,} of "
            f"{int(table.labels[after].sum()):,} labelled rows after training."
        )
    if events:
        st.dataframe(events, key="events")
    return scores


def _proofs(table: Table, signals: list[str], units: dict[str, str], name: str) -> None:
    st.header("4. Signed proofs and receipts")
    hub = _hub()
    if hub is None:
        st.warning("No hub: start the pilot with `factoryops pilot --hub URL`.")
        return
    st.caption(f"Hub {hub.url}. The pilot signs with a SOFTWARE key made for this session.")
    if st.button("Sign and send to the hub", key="send"):
        try:
            st.session_state.run = send_proofs(
                table, signals, units, hub, _workdir() / "device", name=f"pilot {name}"[:100]
            )
        except Fixable as err:
            _fail(err)
    run: ProofRun | None = st.session_state.get("run")
    if run is None:
        return
    st.success(
        f"{run.windows:,} signed windows ({run.readings:,} readings) accepted for {run.utid}"
    )
    row = st.number_input(
        "Row whose first reading gets a receipt", 0, len(run.row_seqs) - 1, 0, key="row"
    )
    if st.button("Get and check its receipt", key="get_receipt"):
        try:
            doc = receipt(hub, run.utid, run.row_seqs[int(row)])
            ok, text = check_receipt(doc, hub, run.state_dir)
        except Fixable as err:
            _fail(err)
        else:
            st.session_state.receipt_doc = doc
            st.session_state.verdict = (ok, text)
    if "verdict" in st.session_state:
        ok, text = st.session_state.verdict
        (st.success if ok else st.error)(("VALID: " if ok else "INVALID: ") + text)
        st.download_button(
            "Download this receipt (check it with `factoryops verify`)",
            json.dumps(st.session_state.receipt_doc, indent=2),
            file_name="receipt.json",
            key="download_receipt",
        )


def _feasibility() -> None:
    st.header("5. Feasibility")
    try:
        from capsules.catalogue import catalogue  # noqa: PLC0415 - optional part of the page
    except ImportError:
        st.info("The capsule catalogue is not installed with this package.")
        return
    caps = {c.name: c for c in catalogue()}
    choice = st.selectbox("Capsule of this plant's area", ["(none)", *sorted(caps)], key="cap")
    if choice == "(none)":
        return
    cap = caps[choice]
    st.write(f"Area {cap.area}: {cap.title}")
    f = cap.feasibility
    st.write(
        f"Assumptions ({f.currency}, {f.horizon_years} years, discount rate "
        f"{f.discount_rate:.0%}); each with its source or marked as an assumption:"
    )
    st.dataframe(
        [
            {"kind": kind, **{k: str(v) for k, v in vars_of(a).items()}}
            for kind, items in (
                ("capex", f.capex),
                ("opex/yr", f.opex_per_year),
                ("benefit", f.benefits),
            )
            for a in items
        ],
        key="assumptions",
    )
    st.info(
        "The P10/P50/P90 of NPV and payback need the twin's outcomes (downtime avoided, scrap, "
        "stockouts) measured on the capsule's simulated plant: "
        f"`factoryops demo --capsule {cap.name}` computes them into its report. A CSV alone "
        "does not give them, so no figure is shown here rather than an invented one."
    )


def _export(name: str, data: bytes, signals: list[str], scores: Scores | None) -> None:
    st.header("6. Export")
    run: ProofRun | None = st.session_state.get("run")
    hub = _hub()
    report: dict[str, Any] = {
        "file": name,
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "signals": signals,
        "model": None
        if scores is None
        else {
            "sha256": scores.sha256,
            "train_rows": scores.train_rows,
            "anomalous_rows": scores.anomalous_rows,
            "events": anomaly_events(scores),
        },
        "proofs": None
        if run is None
        else {"hub": hub.url if hub else None, "utid": run.utid, "windows": run.windows},
        "receipt_checked": st.session_state.get("verdict", (None, None))[0],
    }
    st.download_button(
        "Download the pilot report (JSON)",
        json.dumps(report, indent=2),
        file_name="pilot-report.json",
        key="download_report",
    )


def main() -> None:
    st.set_page_config(page_title="FactoryOps pilot", layout="wide")
    st.title("FactoryOps pilot sandbox")
    loaded = _load_data()
    if loaded is None:
        return
    table, name, data = loaded
    signals, units = _columns(table)
    if not signals:
        st.warning("Pick at least one signal.")
        return
    scores = _model(table, signals)
    _proofs(table, signals, units, name)
    _feasibility()
    _export(name, data, signals, scores)


main()
