"""Test helpers that build real signed windows and upload bodies (no fakes: real crypto)."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from attestation import load_anchors, merkle, receipt_from_json, report_receipt
from attestation.cose import to_be_signed
from attestation.leafbatch import split_leaves
from attestation.microproof import (
    GENESIS_PREV,
    AnomalySummary,
    DriftTest,
    Gap,
    MicroProof,
    ModelRef,
    ResetRecord,
    SourceGap,
    chain_hash,
    compute_stats,
    sign_microproof,
)
from attestation.reading import Reading, decode_leaf, encode_leaf, leaf_hash
from attestation.signers import SoftwareSigner
from attestation.utid import utid_bytes, utid_text
from cloud_sync.storage import Store


@dataclass
class Device:
    """A simulated device that signs consecutive windows with a real P-256 key."""

    signer: SoftwareSigner = field(default_factory=SoftwareSigner.generate)
    next_seq: int = 0
    next_window: int = 0
    prev: bytes = GENESIS_PREV
    t_ns: int = 1_700_000_000_000_000_000

    @property
    def utid(self) -> str:
        return utid_text(utid_bytes(self.signer.public_key_der()))

    def public_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_der_public_key(self.signer.public_key_der())
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def window(
        self,
        n: int = 5,
        *,
        gaps: tuple[Gap, ...] = (),
        skip: int = 0,
        anomaly: AnomalySummary | None = None,
        model: ModelRef | None = None,
        drift: DriftTest | None = None,
        source_gaps: tuple[SourceGap, ...] = (),
        reset: ResetRecord | None = None,
        values: tuple[float | str, ...] = (),
    ) -> tuple[bytes, list[bytes], list[Reading]]:
        """Sign the next window of ``n`` readings (their values ``values`` when given);
        ``skip`` seqs are lost before it."""
        self.next_seq += skip
        rs = []
        for i in range(n):
            self.t_ns += 1_000_000
            value = values[i] if values else 10.0 + self.next_seq % 7
            rs.append(Reading(self.next_seq, self.t_ns, "flow", value, "m3/h"))
            self.next_seq += 1
        leaves = [encode_leaf(r) for r in rs]
        mp = MicroProof(
            window=self.next_window,
            first_seq=rs[0].seq,
            last_seq=rs[-1].seq,
            first_ts_ns=rs[0].ts_ns,
            last_ts_ns=rs[-1].ts_ns,
            count=n,
            root=merkle.root([leaf_hash(x) for x in leaves]),
            prev=self.prev,
            stats=compute_stats(rs),
            gaps=gaps,
            anomaly=anomaly,
            model=model,
            drift=drift,
            source_gaps=source_gaps,
            reset=reset,
        )
        cose = sign_microproof(mp, self.signer, iat=self.t_ns // 10**9)
        self.prev = chain_hash(cose)
        self.next_window += 1
        return cose, leaves, rs


def resign(cose_bytes: bytes, signer: SoftwareSigner) -> bytes:
    """The same protected header and payload signed again: other bytes (ECDSA draws a fresh
    k), just as valid and canonical."""
    protected, _, payload, _ = cbor2.loads(cose_bytes).value
    signature = signer.sign(to_be_signed(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]), canonical=True)


def ingestor(store: Any, data_dir: Path, cls: Any = None) -> Any:
    """A hub's ``Ingestor`` (or subclass ``cls``) over ``store`` as ``HubDeps`` builds it
    (its log key in ``data_dir``), for tests that play a second hub process or a writer."""
    from cloud_sync.ingest import Ingestor
    from cloud_sync.log import HubLog
    from cloud_sync.settings import HubLimits
    from cloud_sync.storage.anomalies import AnomalyBook
    from cloud_sync.storage.sourcegaps import SourceGapBook

    data_dir.mkdir(parents=True, exist_ok=True)
    log = HubLog.open(store, data_dir, "factoryops.local/hub-log")  # HubSettings'

    indexes = (AnomalyBook(store.engine), SourceGapBook(store.engine))
    return (cls or Ingestor)(store, HubLimits(), allow_software_keys=True, log=log, indexes=indexes)


def upload_of(window: tuple[bytes, list[bytes], Any]) -> Any:
    """A window ``Device.window`` signed, as the hub's ingest takes it: its ``ProofUpload``
    (the leaves back to back)."""
    from cloud_sync.ingest import ProofUpload

    cose, leaves, _ = window
    return ProofUpload(cose, b"".join(leaves))


def enrol(
    store: Any, dev: Device, name: str, *, site: str = "default", certificate: bytes = b"",
    now_ns: int = 0,
) -> str:  # fmt: skip
    """``dev``'s software key written straight into a hub ``Store`` (no API, no fleet CA
    certificate): a device the hub knows. Returns its UTID."""
    store.add_device(
        utid=dev.utid, public_key=dev.signer.public_key_der(), key_kind="software",
        certificate=certificate, name=name, site=site, now_ns=now_ns,
    )  # fmt: skip
    return dev.utid


def register_software(
    client: Any, s: Any, dev: Device, name: str = "gw-1", site: str | None = None
) -> str:
    """Register ``dev``'s software key with the admin token (``POST /v1/devices`` on a
    ``TestClient`` of the hub with settings ``s``); its UTID."""
    doc = {"public_key_pem": dev.public_pem(), "key_kind": "software", "name": name}
    r = client.post(
        "/v1/devices",
        json=doc if site is None else {**doc, "site": site},
        headers={"authorization": f"Bearer {s.admin_token}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["utid"])


def receipts_verify(client: Any, s: Any, utid: str, seqs: Iterable[int]) -> bool:
    """Each reading's receipt, fetched from a hub ``TestClient`` (settings ``s``), verifies
    offline against the hub's fleet CA; False at the first that does not."""

    anchors = load_anchors([s.data_dir / "fleet-ca.pem"])
    for seq in seqs:
        r = client.get(f"/v1/devices/{utid}/readings/{seq}/receipt")
        assert r.status_code == 200, r.text
        if not report_receipt(receipt_from_json(r.json()), anchors).valid:
            return False
    return True


def ingest_all(ing: Any, uploads: Any, now_ns: int = 1) -> Any:
    """A request's proofs checked and stored in one transaction: its ``Outcome``."""
    return ing.store_checked([ing.check_many(uploads, now_ns=now_ns)])[0]


def hub_readings(db_path: Path) -> list[Reading]:
    """Every reading a SQLite hub database holds, decoded from its stored window leaves."""
    store = Store.read_only(db_path)
    try:
        blobs = [leaves for _, _, leaves in store.all_leaves()]
    finally:
        store.close()
    return [decode_leaf(leaf) for blob in blobs for leaf in split_leaves(blob)]


def body(*proofs: tuple[bytes, list[bytes]]) -> bytes:
    """An upload as agents send it: each window's leaves back to back (ADR 0008)."""
    return cbor2.dumps({"proofs": [{"cose": c, "leaves": b"".join(ls)} for c, ls in proofs]})


def list_body(*proofs: tuple[bytes, list[bytes]]) -> bytes:
    """An upload as agents before ADR 0008 send it: each window's leaves as an array."""
    return cbor2.dumps({"proofs": [{"cose": c, "leaves": leaves} for c, leaves in proofs]})


def register(hub_url: str, admin_token: str, dev: Device, name: str, client: Any = None) -> str:
    """Development registration of ``dev``'s software key; returns its UTID. ``client``:
    an httpx client to send it with (an in-process ``TestClient``, with ``hub_url`` "")."""
    import httpx

    r = (client or httpx).post(
        f"{hub_url}/v1/devices",
        json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": name},
        headers={"authorization": f"Bearer {admin_token}"},
    )
    r.raise_for_status()
    return str(r.json()["utid"])


def upload(hub_url: str, *proofs: tuple[bytes, list[bytes]]) -> dict[str, object]:
    import httpx

    r = httpx.post(
        f"{hub_url}/v1/proofs", content=body(*proofs), headers={"content-type": "application/cbor"}
    )
    r.raise_for_status()
    doc: dict[str, object] = r.json()
    return doc


def same_cbor_item(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same decoded CBOR item: equal, of exactly the same types all the
    way down (1 is not 1.0 nor True), -0.0 apart from 0.0, any NaN equal to any NaN, map keys
    in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same_cbor_item, a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same_cbor_item(ka, kb) and same_cbor_item(a[ka], b[kb])
            for ka, kb in zip(a, b, strict=True)
        )
    if isinstance(a, cbor2.CBORTag):
        return bool(a.tag == b.tag) and same_cbor_item(a.value, b.value)
    return bool(a == b)


def api_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every FastAPI ``APIRoute`` of an app's route table, through included routers (FastAPI
    >= 0.165 keeps them as branches): new routes are covered by whoever walks them."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)


def post_paths(app: Any) -> list[str]:
    """Every POST route's path template of ``app``."""
    return sorted({r.path for r in api_routes(app.routes) if "POST" in r.methods})


def hub_metric(url: str, admin_token: str, name: str) -> float:
    """The value of the hub's unlabelled metric ``factoryops_hub_<name>`` on ``/metrics``."""
    import httpx

    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {admin_token}"}).text
    for line in text.splitlines():
        if line.startswith(f"factoryops_hub_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no factoryops_hub_{name} in /metrics")


def declared_upload(port: int, declared: int, sent: int = 0) -> socket.socket:
    """A raw client of ``POST /v1/proofs`` that declares a body of ``declared`` bytes and
    sends ``sent`` of them (junk: it never finishes, so nothing parses it)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        "POST /v1/proofs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/cbor\r\n"
        f"content-length: {declared}\r\n\r\n"
    ).encode()
    sock.sendall(head + b"\0" * sent)
    return sock
