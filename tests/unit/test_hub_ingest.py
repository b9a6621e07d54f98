"""The hub's ingest refuses every broken link and keeps what it already accepted."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import load_anchors, receipt_from_json, report_receipt
from attestation.microproof import Gap
from attestation.utid import utid_bytes
from cloud_sync.app import create_app
from cloud_sync.ingest import CheckedRequest, Ingestor, IngestResult, ProofUpload
from cloud_sync.settings import HubSettings
from cloud_sync.storage import DeviceRow, Store
from tests.cborvariants import altered_copies, proof_variants, widened
from tests.hubkit import (
    Device,
    body,
    enrol,
    ingest_all,
    ingestor,
    list_body,
    register_software,
    resign,
    upload_of,
)

CBOR = {"content-type": "application/cbor"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestClient, HubSettings]]:
    """The hub app on a fresh SQLite file, or on the local PostgreSQL with fresh tables."""
    db_url = None
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres_url")  # a fresh database
    s = HubSettings.create(
        tmp_path / "hub", db_url=db_url, allow_software_keys=True, open_reads=True
    )
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        yield client, s


def _post(client: TestClient, content: bytes) -> tuple[int, dict[str, object]]:
    r = client.post("/v1/proofs", content=content, headers=CBOR)
    return r.status_code, r.json()


def test_accepts_a_chain_and_serves_receipts_that_verify(
    hub: tuple[TestClient, HubSettings], tmp_path: Path
) -> None:
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0, w1 = dev.window(4)[:2], dev.window(3)[:2]
    status, doc = _post(client, body(w0, w1))
    assert status == 200
    assert [r["status"] for r in doc["results"]] == ["accepted", "accepted"]  # type: ignore[index,union-attr]  # the answer's JSON is untyped
    rc = client.get(f"/v1/devices/{utid}/readings/5/receipt").json()
    verdict = report_receipt(receipt_from_json(rc), load_anchors([s.data_dir / "fleet-ca.pem"]))
    assert verdict.valid, verdict.error
    assert verdict.key_kind == "software"


def test_a_retry_of_the_same_proof_is_a_duplicate_not_a_second_copy(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    dev = Device()
    register_software(client, s, dev)
    w0 = dev.window(3)[:2]
    assert _post(client, body(w0))[0] == 200
    status, doc = _post(client, body(w0))
    assert status == 200
    assert doc["results"][0]["status"] == "duplicate"  # type: ignore[index]  # the answer's JSON is untyped
    assert client.get("/healthz").json()["readings"] == 3


def test_a_device_revoked_elsewhere_is_refused_at_once_though_its_row_is_cached(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """The checks read device rows from a cache (cloud_sync/ingest.py); a revocation by
    another process (``factoryops hub revoke``, a replica) is not in it, and the write
    transaction refuses the next proof all the same. A retry of an accepted proof is still
    answered as a duplicate."""
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0, w1 = dev.window(3)[:2], dev.window(2)[:2]
    assert _post(client, body(w0))[0] == 200  # its row is now cached, not revoked
    elsewhere = Store.open(s.db_url)  # another process: the hub's own cache does not see it
    try:
        assert elsewhere.set_revoked(utid, True)
    finally:
        elsewhere.close()
    status, doc = _post(client, body(w1))
    assert (status, doc["error"]) == (403, "revoked_device")
    assert client.get("/healthz").json()["readings"] == 3
    status, doc = _post(client, body(w0))
    assert (status, doc["results"][0]["status"]) == (200, "duplicate")  # type: ignore[index]  # the answer's JSON is untyped


def test_a_device_restored_after_a_revocation_uploads_at_once(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """A refusal is never made on a cached row: the revoked row the refusal read is read
    again once the device is restored, so its next upload is accepted at once."""
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0, w1 = dev.window(3)[:2], dev.window(2)[:2]
    assert _post(client, body(w0))[0] == 200
    client.post(
        f"/v1/devices/{utid}/revoke", headers={"authorization": f"Bearer {s.admin_token}"}
    ).raise_for_status()
    assert _post(client, body(w1))[1]["error"] == "revoked_device"  # the revoked row is cached
    elsewhere = Store.open(s.db_url)  # restored by another process: not in this hub's cache
    try:
        assert elsewhere.set_revoked(utid, False)
    finally:
        elsewhere.close()
    status, doc = _post(client, body(w1))
    assert (status, doc["results"][0]["status"]) == (200, "accepted"), doc  # type: ignore[index]  # the answer's JSON is untyped


def _row_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The UTIDs of the device rows ``store`` reads from now on (the real method, counted)."""
    reads: list[str] = []
    read = store.device

    def counted(utid: str, *args: Any, **kwargs: Any) -> DeviceRow | None:
        reads.append(utid)
        return read(utid, *args, **kwargs)

    monkeypatch.setattr(store, "device", counted)
    return reads


def test_a_gateway_uploading_every_ten_seconds_reads_its_device_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet gateway sends one window every few seconds: its checks take its row from the
    cache however long ago it was read (a query a proof cost ~17 % of a fleet hub's CPU), the
    write refusing what a stale row let through (the tests above)."""
    store = Store.open(f"sqlite:///{tmp_path / 'hub.db'}")
    ing = ingestor(store, tmp_path)
    dev = Device()
    enrol(store, dev, "gw-1", now_ns=1)
    reads = _row_reads(store, monkeypatch)
    try:
        for i in range(6):  # nothing in the ingest reads a clock: no row ever grows too old
            results, refusal = ingest_all(ing, [upload_of(dev.window(10))], now_ns=i + 1)
            assert refusal is None and results[0].status == "accepted"
    finally:
        ing.close()
        store.close()
    assert len(reads) == 1


def test_the_hubs_caches_of_rows_and_keys_stay_bounded_by_a_fleet_larger_than_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device rows and the loaded keys (~2.1 KB each) are cached for the checks; a fleet
    larger than the cache starts it again, and every proof is still accepted."""
    monkeypatch.setattr("cloud_sync.ingest._MAX_CACHED_DEVICES", 2)
    store = Store.open(f"sqlite:///{tmp_path / 'hub.db'}")
    ing = ingestor(store, tmp_path)
    fleet = [Device() for _ in range(5)]
    for i, dev in enumerate(fleet):
        enrol(store, dev, f"gw-{i}", now_ns=1)
    sizes = []
    try:
        for rnd in range(2):
            for dev in fleet:
                results, refusal = ingest_all(ing, [upload_of(dev.window(10))], now_ns=rnd + 1)
                assert refusal is None and results[0].status == "accepted"
                sizes.append((len(ing._rows), len(ing._keys)))  # the bounds themselves
    finally:
        ing.close()
        store.close()
    assert max(sizes) == (2, 2)


def test_a_restarted_hub_reads_its_fleets_rows_in_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub that starts is uploaded to by its whole fleet within one period: it caches the
    rows of the devices last seen in one query, and no gateway's first upload reads its own
    (bench fleet: a query each was 6.5 % of a fresh hub's GIL-held time). A revoked device
    is not cached: its refusal is made on a fresh read."""
    settings = HubSettings.create(tmp_path / "hub", allow_software_keys=True)
    store = Store.open(settings.db_url)
    fleet = [Device() for _ in range(3)]
    for i, dev in enumerate(fleet):
        enrol(store, dev, f"gw-{i}", now_ns=1)
    gone = Device()
    enrol(store, gone, "gw-gone", now_ns=1)
    assert store.set_revoked(gone.utid, True)
    with TestClient(create_app(settings, store=store)) as client:  # the hub starts here
        reads = _row_reads(store, monkeypatch)
        for dev in fleet:
            assert _post(client, body(dev.window(10)[:2]))[0] == 200
        status, doc = _post(client, body(gone.window(10)[:2]))
    store.close()
    assert (status, doc["error"]) == (403, "revoked_device")
    assert reads == [gone.utid]


def test_unknown_device_is_refused(hub: tuple[TestClient, HubSettings]) -> None:
    client, _ = hub
    status, doc = _post(client, body(Device().window(2)[:2]))
    assert (status, doc["error"]) == (403, "unknown_device")


def test_a_refused_upload_leaves_no_cycle_that_holds_its_body(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """A refused request is freed when it is answered, not at the collector's next run (a
    serving hub runs it rarely, ADR 0050): the refusal was kept with its traceback, whose
    frames held the checked request, and that cycle kept every refused body in memory."""
    client, s = hub
    dev, stranger = Device(), Device()
    register_software(client, s, dev)
    cose, leaves, _ = dev.window(3)
    refused = [
        body(stranger.window(2)[:2]),  # unknown device: refused by the checks
        body((cose, [leaves[1], leaves[0], *leaves[2:]])),  # not the signed leaves' order
        body(dev.window(2)[:2]),  # window 1 before 0: refused by the writer, in its thread
    ]
    gc.collect()
    gc.disable()
    try:
        answers = [_post(client, content)[0] for content in refused]
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage
        gc.collect()
        held = [type(o).__name__ for o in gc.garbage if isinstance(o, CheckedRequest | ProofUpload)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert answers == [403, 422, 409]
    assert held == []


def test_a_proof_signed_by_another_key_is_refused(hub: tuple[TestClient, HubSettings]) -> None:
    client, s = hub
    dev, thief = Device(), Device()
    register_software(client, s, dev)
    cose, leaves, _ = thief.window(2)
    # splice the enrolled device's kid into the thief's proof: the signature cannot match
    forged = cose.replace(dev_kid(thief), dev_kid(dev))
    status, doc = _post(client, body((forged, leaves)))
    assert status in (400, 401)
    assert doc["error"] in ("bad_signature", "malformed_proof")


def dev_kid(d: Device) -> bytes:

    return utid_bytes(d.signer.public_key_der())


def test_reordered_windows_are_refused_with_the_expected_window(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    dev = Device()
    register_software(client, s, dev)
    w0, w1 = dev.window(2)[:2], dev.window(2)[:2]
    status, doc = _post(client, body(w1))
    assert (status, doc["error"], doc["expected_window"]) == (409, "out_of_order", 0)
    assert _post(client, body(w0, w1))[0] == 200


def test_a_fork_is_refused_and_the_first_branch_stays(hub: tuple[TestClient, HubSettings]) -> None:
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0 = dev.window(2)[:2]
    saved = (dev.next_seq, dev.next_window, dev.prev, dev.t_ns)
    w1 = dev.window(2)[:2]
    dev.next_seq, dev.next_window, dev.prev, dev.t_ns = saved
    dev.t_ns += 7  # same prev, different content
    w1_fork = dev.window(2)[:2]
    assert _post(client, body(w0, w1))[0] == 200
    status, doc = _post(client, body(w1_fork))
    assert (status, doc["error"]) == (409, "fork")
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 2


def test_altered_copies_are_refused_as_noncanonical_and_the_genuine_chain_goes_on(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """Issue 16: five altered copies of a signed proof were accepted, and the genuine proof
    and every later window were then refused as `fork`: the gateway stopped for good."""
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0, w1, w2 = (dev.window(3)[:2] for _ in range(3))
    copies = altered_copies(w0[0])
    for name, altered in copies.items():
        status, doc = _post(client, body((altered, w0[1])))
        assert (status, doc["error"]) == (400, "noncanonical"), name
    assert client.get("/healthz").json()["readings"] == 0
    status, doc = _post(client, body(w0, w1))
    assert status == 200, doc
    for name, altered in copies.items():  # after it is stored: still no duplicate, no fork
        status, doc = _post(client, body((altered, w0[1])))
        assert (status, doc["error"]) == (400, "noncanonical"), name
    assert _post(client, body(w2))[0] == 200
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 3
    rc = client.get(f"/v1/devices/{utid}/readings/1/receipt").json()
    verdict = report_receipt(receipt_from_json(rc), load_anchors([s.data_dir / "fleet-ca.pem"]))
    assert verdict.valid, verdict.error


def test_a_payload_with_a_float_cbor2_widens_is_taken_only_in_its_shortest_form(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """A reading of 40000.0 in a window's statistics: the signer writes the half RFC 8949
    requires; the copy a signer before cborsafe.dumps wrote (the float32 cbor2's C encoder
    writes, validly signed) was accepted as canonical, and is now refused."""
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0 = dev.window(3, values=(40000.0, 60000.0, -32768.0))[:2]
    status, doc = _post(client, body((widened(w0[0], dev.signer.sign), w0[1])))
    assert (status, doc["error"]) == (400, "noncanonical"), doc
    assert "payload" in str(doc["detail"])
    assert _post(client, body(w0))[0] == 200
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 1


def test_a_second_signature_over_the_same_payload_is_a_duplicate_never_a_fork(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """ECDSA signs with a fresh random k: a device that signs a window again (a retry after
    a crash) writes other, equally valid bytes. Same payload, same window: a duplicate."""
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0, w1 = dev.window(3)[:2], dev.window(2)[:2]
    again = resign(w0[0], dev.signer)
    assert again != w0[0]
    assert _post(client, body(w0))[0] == 200
    status, doc = _post(client, body((again, w0[1])))
    assert (status, doc["results"][0]["status"]) == (200, "duplicate")  # type: ignore[index]  # the answer's JSON is untyped
    status, doc = _post(client, body((again, w0[1]), w1))  # before the next window, in one request
    assert status == 200, doc
    assert [r["status"] for r in doc["results"]] == ["duplicate", "accepted"]  # type: ignore[union-attr]  # the answer's JSON is untyped
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 2


def test_an_upload_body_with_bytes_after_it_is_refused(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    dev = Device()
    register_software(client, s, dev)
    status, doc = _post(client, body(dev.window(2)[:2]) + b"\x00")
    assert (status, doc["error"]) == (400, "malformed_body")
    assert "after" in str(doc["detail"])
    assert client.get("/healthz").json()["readings"] == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_only_the_canonical_encoding_of_a_proof_is_accepted(
    hub: tuple[TestClient, HubSettings], data: st.DataObject
) -> None:
    """A valid proof re-encoded every way CBOR allows, each copy validly signed (see
    tests/cborvariants.py): the hub stores a copy iff it is the canonical one, refuses every
    other as `noncanonical` without a change, and later windows still chain."""
    client, s = hub
    dev = Device()
    r = client.post(
        "/v1/devices",
        json={"public_key_pem": dev.public_pem(), "key_kind": "software", "name": "gw-p"},
        headers={"authorization": f"Bearer {s.admin_token}"},
    )
    utid = r.json()["utid"]
    w0 = dev.window(2)[:2]
    variants = [data.draw(proof_variants(w0[0], dev.signer.sign)) for _ in range(3)]
    stored = False
    for v in variants:
        status, doc = _post(client, body((v.data, w0[1])))
        if v.canonical:
            assert status == 200, doc
            stored = True
        else:
            assert (status, doc["error"]) == (400, "noncanonical"), doc
        assert client.get(f"/v1/devices/{utid}").json()["windows"] == int(stored)
    if not stored:
        assert _post(client, body(w0))[0] == 200
    assert _post(client, body(dev.window(2)[:2]))[0] == 200


def test_a_seq_hole_needs_a_gap_record(hub: tuple[TestClient, HubSettings]) -> None:
    client, s = hub
    dev = Device()
    register_software(client, s, dev)
    assert _post(client, body(dev.window(2)[:2]))[0] == 200
    saved = (dev.next_seq, dev.next_window, dev.prev, dev.t_ns)
    status, doc = _post(client, body(dev.window(2, skip=3)[:2]))
    assert (status, doc["error"]) == (422, "seq_gap")
    dev.next_seq, dev.next_window, dev.prev, dev.t_ns = saved
    covered = dev.window(2, skip=3, gaps=(Gap(2, 4, "agent restart"),))[:2]
    assert _post(client, body(covered))[0] == 200


def test_leaves_that_do_not_hash_to_the_signed_root_are_refused(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    dev = Device()
    register_software(client, s, dev)
    cose, leaves, _ = dev.window(3)
    swapped = [leaves[0], leaves[0], leaves[2]]
    status, doc = _post(client, body((cose, swapped)))
    assert status == 422
    assert doc["error"] in ("bad_leaf", "root_mismatch")
    status, doc = _post(client, body((cose, leaves[:2])))
    assert (status, doc["error"]) == (422, "leaf_count")
    assert doc["detail"] == "leaves: 2 leaves sent, the proof signs 3"
    status, doc = _post(client, body((cose, [*leaves, leaves[2]])))
    assert (status, doc["error"]) == (422, "leaf_count")
    assert "bytes follow the last of the 3 leaves signed" in str(doc["detail"])
    status, doc = _post(client, body((cose, [leaves[0], leaves[1][:-1] + b"\xff", leaves[2]])))
    assert (status, doc["error"]) == (422, "bad_leaf")
    assert str(doc["detail"]).startswith("leaves[1]: ")


def test_uploads_of_agents_before_adr_0008_send_leaves_as_an_array(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """An agent not yet updated sends each window's leaves as a CBOR array: accepted, stored
    as the same bytes back to back, and its mistakes named as for a sequence."""
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    cose0, leaves0, _ = dev.window(3)
    cose1, leaves1, _ = dev.window(2)
    status, doc = _post(client, list_body((cose0, leaves0)))
    assert (status, doc["results"][0]["status"]) == (200, "accepted")
    status, doc = _post(client, list_body((cose1, leaves1[:1])))
    assert (status, doc["error"]) == (422, "leaf_count")
    status, doc = _post(client, cbor2.dumps({"proofs": [{"cose": cose1, "leaves": [1, 2]}]}))
    assert (status, doc["error"]) == (400, "malformed_body")
    assert "proofs[0].leaves must be a byte string" in str(doc["detail"])
    assert _post(client, body((cose1, leaves1)))[0] == 200  # the same chain, the new form
    assert client.get(f"/v1/devices/{utid}").json()["readings"] == 5
    for seq in range(5):  # every reading's receipt rebuilt from what was stored
        assert client.get(f"/v1/devices/{utid}/readings/{seq}/receipt").status_code == 200


def test_a_refused_proof_keeps_the_accepted_ones_before_it(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    w0 = dev.window(2)[:2]
    cose1, leaves1, _ = dev.window(2)
    status, doc = _post(client, body(w0, (cose1, leaves1[:1])))
    assert (status, doc["index"]) == (422, 1)
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 1


def test_oversized_and_wrongly_typed_bodies_get_4xx(tmp_path: Path) -> None:
    from cloud_sync.settings import HubLimits

    s = HubSettings.create(
        tmp_path / "h",
        allow_software_keys=True,
        open_reads=True,
        limits=HubLimits(max_body_bytes=1000),
    )
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        assert _post(client, b"\x00" * 5000)[0] == 413
        r = client.post("/v1/proofs", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 415
        import zstandard

        bomb = zstandard.ZstdCompressor().compress(b"\x00" * (80 << 20))
        r = client.post("/v1/proofs", content=bomb, headers={**CBOR, "content-encoding": "zstd"})
        assert r.status_code == 413


def test_registration_needs_the_admin_token(hub: tuple[TestClient, HubSettings]) -> None:
    client, _ = hub
    r = client.post(
        "/v1/devices",
        json={"public_key_pem": Device().public_pem(), "key_kind": "software", "name": "x"},
    )
    assert r.status_code == 401


def test_software_keys_are_refused_by_default(tmp_path: Path) -> None:
    s = HubSettings.create(tmp_path / "strict")
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        r = client.post(
            "/v1/devices",
            json={"public_key_pem": Device().public_pem(), "key_kind": "software", "name": "x"},
            headers={"authorization": f"Bearer {s.admin_token}"},
        )
        assert (r.status_code, r.json()["error"]) == (403, "software_key_refused")


_hostile = st.one_of(
    st.binary(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=10),
        lambda kids: (
            st.lists(kids, max_size=4)
            | st.dictionaries(
                st.sampled_from(["proofs", "cose", "leaves", "x"]) | st.text(max_size=5),
                kids,
                max_size=4,
            )
        ),
        max_leaves=12,
    ).map(cbor2.dumps),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_hostile)
def test_hostile_bodies_get_4xx_json_and_change_nothing(
    hub: tuple[TestClient, HubSettings], data: bytes
) -> None:
    client, _s = hub
    before = client.get("/healthz").json()
    r = client.post("/v1/proofs", content=data, headers=CBOR)
    assert 400 <= r.status_code < 500, r.text
    assert "error" in r.json()
    assert client.get("/healthz").json() == before


def test_windows_with_anomalies_are_listed_once_with_their_model(
    hub: tuple[TestClient, HubSettings],
) -> None:
    from attestation.microproof import AnomalySummary, ModelRef

    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    model = ModelRef("pump-pca", bytes(range(32)), "1")
    calm = dev.window(4, model=model, anomaly=AnomalySummary(0, 0.4, 1.0))[:2]
    hot = dev.window(4, model=model, anomaly=AnomalySummary(3, 2.5, 1.0))[:2]
    status, _ = _post(client, body(calm, hot))
    assert status == 200
    assert _post(client, body(hot))[0] == 200  # a duplicate upload adds nothing
    (event,) = client.get("/v1/anomalies", params={"utid": utid}).json()["anomalies"]
    assert (event["window"], event["anomalous_rows"], event["max_score"]) == (1, 3, 2.5)
    assert event["model_id"] == "pump-pca" and event["model_sha256"] == bytes(range(32)).hex()
    assert client.get("/v1/anomalies", params={"limit": 0}).status_code == 422


def test_metrics_count_outcomes_readings_and_requests(hub: tuple[TestClient, HubSettings]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client, s = hub
    dev = Device()
    register_software(client, s, dev)
    assert _post(client, body(dev.window(4)[:2], dev.window(3)[:2]))[0] == 200
    assert _post(client, body(Device().window(2)[:2]))[0] == 403  # unknown device
    text = client.get("/metrics").text
    samples = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
    }
    assert samples[("factoryops_hub_proofs_total", (("outcome", "accepted"), ("reason", "")))] == 2
    refused = (("outcome", "refused"), ("reason", "unknown_device"))
    assert samples[("factoryops_hub_proofs_total", refused)] == 1
    assert samples[("factoryops_hub_readings_accepted_total", ())] == 7
    assert samples[("factoryops_hub_log_entries", ())] == 2
    assert samples[("factoryops_hub_devices", ())] == 1
    route = (("method", "POST"), ("route", "/v1/proofs"), ("status", "200"))
    assert samples[("factoryops_hub_request_seconds_count", route)] == 1
    assert samples[("factoryops_hub_commit_group_requests_count", ())] == 1  # one commit


def test_the_grafana_dashboard_charts_only_metrics_that_exist() -> None:
    import json
    import re

    from agent.metrics import AgentMetrics
    from cloud_sync.metrics import HubMetrics

    doc = json.loads((Path(__file__).parents[2] / "docs" / "grafana" / "hub.json").read_text())
    used = {
        name
        for p in doc["panels"]
        for t in p["targets"]
        for name in re.findall(r"factoryops_[a-z_]+", t["expr"])
    }
    known = {  # read at scrape time (HubDeps.open): no family until a hub is built
        "factoryops_hub_log_entries",
        "factoryops_hub_body_bytes_held",
        "factoryops_hub_devices",
        "factoryops_hub_devices_revoked",
    }
    for registry in (HubMetrics().registry, AgentMetrics().registry):
        for fam in registry.collect():  # labelled families have no samples until used
            known |= {fam.name + sfx for sfx in ("", "_total", "_bucket", "_count", "_sum")}
    assert used <= known, used - known


def test_one_request_interleaves_devices_and_repeats_a_proof(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """A request's proofs share one transaction: each device's chain head moves within it."""
    client, s = hub
    a, b = Device(), Device()
    ua, ub = register_software(client, s, a), register_software(client, s, b)
    a0, b0, a1, b1 = (d.window(3)[:2] for d in (a, b, a, b))
    status, doc = _post(client, body(a0, b0, a1, a1, b1))
    assert status == 200, doc
    assert [r["status"] for r in doc["results"]] == ["accepted"] * 3 + ["duplicate", "accepted"]
    for utid in (ua, ub):
        assert client.get(f"/v1/devices/{utid}").json()["windows"] == 2
    # and the whole request again is idempotent
    status, doc = _post(client, body(a0, b0, a1, b1))
    assert [r["status"] for r in doc["results"]] == ["duplicate"] * 4


@pytest.mark.parametrize("when", ["before_our_head_read", "after_our_head_read"])
def test_a_request_that_races_another_writer_stores_nothing_twice(
    hub: tuple[TestClient, HubSettings], when: str
) -> None:
    """Another writer (a replica) stores the request's first proof between our checks and our
    writes. Before we read the chain head inside our transaction, we see its proof and answer
    duplicate; after, our compare-and-set on the head fails, the request rolls back and is
    stored again one proof at a time. Either way nothing is stored twice or lost."""
    from cloud_sync.storage import Store

    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    uploads = [upload_of(dev.window(4)) for _ in range(2)]
    ours, theirs = Store.open(s.db_url), Store.open(s.db_url)
    replica = ingestor(theirs, s.data_dir)
    raced: list[bool] = []

    def race() -> None:
        if not raced:
            raced.append(True)
            assert replica.ingest(uploads[0], now_ns=1).status == "accepted"

    class Raced(Ingestor):  # our own ingest, with the replica's write slipped in
        def _chain_in(self, *args: Any, **kwargs: Any) -> IngestResult:
            if when == "before_our_head_read":
                race()
            done = super()._chain_in(*args, **kwargs)
            if when == "after_our_head_read":
                race()
            return done

    try:
        results, refusal = ingest_all(ingestor(ours, s.data_dir, Raced), uploads, now_ns=2)
    finally:
        ours.close()
        theirs.close()
    assert raced
    assert refusal is None
    assert [(r.window, r.status) for r in results] == [(0, "duplicate"), (1, "accepted")]
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 2


def _commits(client: TestClient) -> float:
    """Group commits the hub made so far (its ``/metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for x in fam.samples:
            if x.name == "factoryops_hub_commit_group_requests_count":
                return x.value
    raise AssertionError("no factoryops_hub_commit_group_requests_count in /metrics")


def _upload_at_once(client: TestClient, bodies: Sequence[bytes]) -> list[Any]:
    """POST each upload body to the hub's app at the same moment (one event loop, one
    ``gather``), as concurrent gateways or a healed partition deliver them; the responses
    in the order of ``bodies``."""
    import asyncio

    import httpx

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)  # type: ignore[arg-type]  # httpx types the ASGI app narrower than FastAPI's
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
            return await asyncio.gather(
                *(c.post("/v1/proofs", content=b, headers=CBOR) for b in bodies)
            )

    return asyncio.run(send_all())


def test_concurrent_requests_share_a_commit_and_keep_their_own_answers(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """Requests of several devices that arrive together are stored in one transaction (group
    commit); each still gets its own answer, a refusal in one changes nothing for the others,
    and every proof acknowledged is stored exactly once."""

    client, s = hub
    devs = [Device() for _ in range(4)]
    utids = [register_software(client, s, d) for d in devs]
    stored_before = devs[3].window(2)[:2]  # already accepted: its retry is a duplicate
    assert _post(client, body(stored_before))[0] == 200
    good = [body(d.window(3)[:2], d.window(3)[:2]) for d in devs[:2]]
    first = devs[2].window(3)[:2]
    cose, leaves, _ = devs[2].window(3)
    refused = body(first, (cose, leaves[:1]))  # its second proof lacks leaves: 422, index 1
    commits_before = _commits(client)

    answers = _upload_at_once(client, [*good, refused, body(stored_before)])
    assert _commits(client) - commits_before < len(answers)  # fewer commits than requests
    assert [a.status_code for a in answers] == [200, 200, 422, 200]
    for a in answers[:2]:
        assert [r["status"] for r in a.json()["results"]] == ["accepted", "accepted"]
    assert answers[2].json()["index"] == 1
    assert [r["status"] for r in answers[2].json()["results"]] == ["accepted"]
    assert [r["status"] for r in answers[3].json()["results"]] == ["duplicate"]
    windows = [client.get(f"/v1/devices/{u}").json()["windows"] for u in utids]
    assert windows == [2, 2, 1, 1]


@dataclass
class _WriterHub:
    """A running hub app on SQLite, its devices registered through the API, and an ingestor
    of its own that a test hands to a ``GroupCommit`` directly."""

    client: TestClient
    store: Store
    ingest: Ingestor
    utids: list[str]
    devs: list[Device]


@pytest.fixture
def writer_hub(tmp_path: Path) -> Iterator[Callable[..., _WriterHub]]:
    """``writer_hub(n, cls=Ingestor)``: a ``_WriterHub`` with ``n`` devices; stopped and its
    store closed after the test."""
    with contextlib.ExitStack() as stack:

        def make(n: int, cls: type[Ingestor] = Ingestor) -> _WriterHub:
            s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
            store = Store.open(s.db_url)
            stack.callback(store.close)  # after the app below has stopped
            client = stack.enter_context(TestClient(create_app(s, store=store)))
            devs = [Device() for _ in range(n)]
            utids = [register_software(client, s, d) for d in devs]
            return _WriterHub(client, store, ingestor(store, s.data_dir, cls), utids, devs)

        yield make


def test_a_failed_group_commit_fails_each_of_its_requests_and_the_next_group_commits(
    writer_hub: Callable[..., _WriterHub],
) -> None:
    """When the database refuses a group's transaction, every request in that group hears
    the error (none of it was acknowledged or stored), and the writer goes on: a request in a
    later group, and the failed ones sent again, are stored. The failure is injected at the
    first ``store_checked`` call (an ``OperationalError`` as a full disk raises); the store is
    a real SQLite file. How the requests fall into groups is the writer's business: the test
    reads which ones the failed group held."""
    import asyncio

    from sqlalchemy.exc import OperationalError

    from cloud_sync.groupcommit import GroupCommit
    from cloud_sync.ingest import Ingestor, Outcome

    class FailsOnce(Ingestor):
        failed: list[CheckedRequest] | None = None  # the failed group's requests

        def store_checked(self, requests: Sequence[CheckedRequest]) -> list[Outcome]:
            if self.failed is None:
                self.failed = list(requests)
                raise OperationalError("COMMIT", {}, Exception("database or disk is full"))
            return super().store_checked(requests)

    hub = writer_hub(2, FailsOnce)
    ingest = hub.ingest
    assert isinstance(ingest, FailsOnce)
    commits: list[int] = []  # requests a commit held
    writer = GroupCommit(ingest, on_commit=commits.append)
    uploads = [[upload_of(d.window(3))] for d in hub.devs]

    sent: list[CheckedRequest] = []

    async def send(which: list[int]) -> list[Outcome | BaseException]:
        checked = [ingest.check_many(uploads[i], now_ns=1) for i in which]
        sent[:] = checked
        return await asyncio.gather(*(writer.store(c) for c in checked), return_exceptions=True)

    first = asyncio.run(send([0, 1]))
    failed = [i for i in (0, 1) if any(sent[i] is r for r in ingest.failed or [])]
    assert failed, "the first group failed"
    for i, answer in enumerate(first):
        if i in failed:
            assert isinstance(answer, OperationalError), answer
        else:  # in a later group: stored
            assert not isinstance(answer, BaseException)
            assert [r.status for r in answer[0]] == ["accepted"]
    windows = [hub.client.get(f"/v1/devices/{u}").json()["windows"] for u in hub.utids]
    assert windows == [0 if i in failed else 1 for i in (0, 1)]
    again = asyncio.run(send(failed))
    assert [[r.status for r in o[0]] for o in again if not isinstance(o, BaseException)] == [
        ["accepted"] for _ in failed
    ]
    assert [hub.client.get(f"/v1/devices/{u}").json()["windows"] for u in hub.utids] == [1, 1]
    assert sum(commits) == 2  # the failed group made no commit; each request one after


def test_the_writer_commits_while_the_loop_is_busy_checking_other_requests(
    writer_hub: Callable[..., _WriterHub],
) -> None:
    """ADR 0054: the writer thread takes its first group itself. When a task on the event
    loop took it, nothing was committed until the loop had run every callback already due:
    with many devices uploading batches, the loop checked all of them while the database
    idled, then idled while the database stored them. Here the loop is kept busy (blocked
    until the request is on disk, as a long run of checks would keep it); the request must
    be committed meanwhile. Before the change this waited out its bound and failed."""
    import asyncio

    from cloud_sync.groupcommit import GroupCommit
    from cloud_sync.ingest import Outcome
    from tests.waiting import until_sync

    hub = writer_hub(1)
    commits: list[int] = []
    writer = GroupCommit(hub.ingest, on_commit=commits.append)
    checked = hub.ingest.check_many([upload_of(hub.devs[0].window(3))], now_ns=1)

    async def loop_busy_meanwhile() -> Outcome:
        task = asyncio.create_task(writer.store(checked))
        await asyncio.sleep(0)  # a yield, not a wait: the task queues its request
        until_sync(  # blocks the loop's thread: no callback of the loop runs meanwhile
            lambda: hub.store.counts()["windows"] == 1,
            within_s=30,
            what="the request stored while the loop is busy",
        )
        return await task

    results, refused = asyncio.run(loop_busy_meanwhile())
    assert refused is None
    assert [(r.status, r.window) for r in results] == [("accepted", 0)]
    assert commits == [1]
    assert hub.client.get(f"/v1/devices/{hub.utids[0]}").json()["windows"] == 1


def test_a_request_after_the_writer_ended_hears_why_and_nothing_is_stored(
    writer_hub: Callable[..., _WriterHub],
) -> None:
    """A hub being stopped ends its writer thread (the store's close). A request that
    reaches the writer after that is answered with the reason at once, never left waiting,
    and nothing of it is stored."""
    import asyncio

    from cloud_sync.groupcommit import GroupCommit

    hub = writer_hub(1)
    writer = GroupCommit(hub.ingest)
    checked = hub.ingest.check_many([upload_of(hub.devs[0].window(3))], now_ns=1)
    writer.close()
    with pytest.raises(RuntimeError, match="after shutdown"):
        asyncio.run(writer.store(checked))
    assert hub.client.get(f"/v1/devices/{hub.utids[0]}").json()["windows"] == 0


@pytest.mark.parametrize("gather", [False, True])
def test_an_idle_writer_waits_so_uploads_a_moment_apart_share_one_commit(
    writer_hub: Callable[..., _WriterHub], gather: bool
) -> None:
    """Gateways upload one proof at a time at moments of their own. With the idle writer's
    wait, a second upload that arrives during it joins the first one's commit, and each
    request still hears exactly its own results; without the wait the first is committed at
    once, alone. No clock decides it: the writer's wait returns once the test has queued the
    second request, and without a wait the first must be on disk while the loop is blocked,
    before the second is sent."""
    import asyncio
    import threading

    from cloud_sync.groupcommit import GroupCommit
    from cloud_sync.ingest import Outcome
    from tests.waiting import until_sync

    hub = writer_hub(2)
    held: list[int] = []
    second_queued = threading.Event()
    waited: list[float] = []

    def wait(seconds: float) -> None:  # the writer thread's wait, ended by the test
        waited.append(seconds)
        assert second_queued.wait(30), "the second request was never queued"

    writer = GroupCommit(
        hub.ingest, on_commit=held.append, gather_s=0.05 if gather else 0.0, wait=wait
    )
    checked = [hub.ingest.check_many([upload_of(d.window(3))], now_ns=1) for d in hub.devs]

    async def a_moment_apart() -> list[Outcome]:
        first = asyncio.create_task(writer.store(checked[0]))
        await asyncio.sleep(0)  # a yield, not a wait: the first request is queued
        if not gather:  # blocks the loop: the first is stored with nothing else queued
            until_sync(lambda: hub.store.counts()["windows"] == 1, within_s=30)
        second = asyncio.create_task(writer.store(checked[1]))
        await asyncio.sleep(0)  # the second request is queued
        second_queued.set()
        return [await first, await second]

    answers = asyncio.run(a_moment_apart())
    assert held == ([2] if gather else [1, 1])
    assert waited == ([0.05] if gather else [])
    for (results, refused), utid in zip(answers, hub.utids, strict=True):
        assert refused is None
        assert [(r.status, r.window) for r in results] == [("accepted", 0)]
        assert hub.client.get(f"/v1/devices/{utid}").json()["windows"] == 1


@pytest.fixture(scope="module")
def two_devices(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, list[Any]], list[str]]:
    """A migrated SQLite file with two registered devices, and each device's signed uploads:
    windows 0-3 and a second, different window 1 (a fork)."""
    import dataclasses

    from cloud_sync.storage import Store

    db = tmp_path_factory.mktemp("group") / "template.db"
    store = Store.open(f"sqlite:///{db}")
    items: dict[str, list[Any]] = {}
    utids = []
    for name in ("a", "b"):
        dev = Device()
        utids.append(enrol(store, dev, name, certificate=b"-"))
        w0 = dev.window(2)
        fork = dataclasses.replace(dev).window(3)  # same key, same prev, other readings
        ws = [w0, dev.window(2), dev.window(2), dev.window(2), fork]
        items[name] = [upload_of(w) for w in ws]
    store.close()
    return db, items, utids


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("ab"), st.lists(st.integers(0, 4), min_size=1, max_size=3)),
        min_size=1,
        max_size=5,
    )
)
def test_a_group_commit_answers_and_stores_exactly_what_requests_one_by_one_would(
    tmp_path_factory: pytest.TempPathFactory,
    two_devices: tuple[Path, dict[str, list[Any]], list[str]],
    requests: list[tuple[str, list[int]]],
) -> None:
    """Any mix of requests (two devices; windows in order, out of order, repeated, forked),
    stored as one group, gets the same answer for every request and leaves the same chain
    heads as the same requests stored one after another: the group shares the chain heads
    and the duplicates its earlier requests made."""
    import shutil

    from cloud_sync.storage import Store

    template, items, utids = two_devices
    uploads = [[items[d][i] for i in idx] for d, idx in requests]
    work = tmp_path_factory.mktemp("run")
    answers, heads = [], []
    for grouped in (True, False):
        db = work / f"{grouped}.db"
        shutil.copy(template, db)
        store = Store.open(f"sqlite:///{db}")
        try:
            ing = ingestor(store, work / "keys")
            if grouped:
                outs = ing.store_checked([ing.check_many(u, now_ns=1) for u in uploads])
            else:
                outs = [ingest_all(ing, u) for u in uploads]
            answers.append(
                [
                    (
                        [(r.window, r.status) for r in results],
                        refusal and (refusal[0], refusal[1].code),
                    )
                    for results, refusal in outs
                ]
            )
            rows = [store.device(u) for u in utids]
            heads.append([(r.head_window, r.head_hash, r.n_readings) for r in rows if r])
        finally:
            store.close()
    assert answers[0] == answers[1]
    assert heads[0] == heads[1]


def test_replicas_with_stale_cached_heads_chain_on_fresh_reads(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """Each hub caches device rows and chains a group's first proof of a device onto its
    cached head without a query (cloud_sync/ingest.py ``_head_for``). Two replicas take
    turns at one chain, so each one's cached head is always behind: every proof is still
    accepted once, a retry sent to the other replica is a duplicate, and one sent to the
    replica whose head is stale is too."""
    from cloud_sync.storage import Store

    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    replicas = [ingestor(Store.open(s.db_url), s.data_dir) for _ in range(2)]
    sent = []
    for i in range(6):
        upload = upload_of(dev.window(3))
        sent.append(upload)
        outcome = ingest_all(replicas[i % 2], [upload])
        assert outcome == ([IngestResult(i, "accepted", 3 * i, 3 * i + 2, 3)], None), outcome
    for i, upload in enumerate(sent):
        results, refused = ingest_all(replicas[(i + 1) % 2], [upload])
        assert refused is None
        assert [r.status for r in results] == ["duplicate"]
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 6
    for r in replicas:
        r.store.close()


def test_closing_the_store_ends_the_writer_thread(tmp_path: Path) -> None:
    """Every hub app has a writer thread for its group commits; closing the store (as the
    app's lifespan does when it stops) ends it, so hubs made and stopped in one process
    (tests, the demo) leave no thread behind."""
    import threading

    def writers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("hub-writer")}

    before = writers()
    s = HubSettings.create(tmp_path / "hub", allow_software_keys=True, open_reads=True)
    dev = Device()
    with TestClient(create_app(s)) as client:
        register_software(client, s, dev)
        cose, leaves, _ = dev.window(3)
        r = client.post("/v1/proofs", content=body((cose, leaves)), headers=CBOR)
        assert r.status_code == 200, r.text
        assert len(writers() - before) == 1  # the upload started it
    assert writers() == before


def test_overlapping_retries_of_one_device_arriving_together_are_all_answered_200(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """What a healed partition delivers at once: the uploads an agent timed out on (held by
    the network) and its retry, each a run of the same windows from the same start, plus a
    later run. Every one is answered 200, each window accepted once and repeated as a
    duplicate, whatever order they reach the hub in."""
    import random

    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    proofs = [dev.window(3)[:2] for _ in range(8)]
    runs = [proofs[:3], proofs[:6], proofs[:8], proofs[3:8], proofs[:3]]
    rng = random.Random(5)

    for _ in range(5):
        order = rng.sample(runs, len(runs))
        answers = _upload_at_once(client, [body(*run) for run in order])
        assert [a.status_code for a in answers] == [200] * len(order), [
            a.text[:200] for a in answers
        ]
        for run, a in zip(order, answers, strict=True):
            assert len(a.json()["results"]) == len(run)
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 8


def test_a_repeat_of_a_window_an_earlier_group_stored_is_a_duplicate_after_this_group_moved_on(
    hub: tuple[TestClient, HubSettings],
) -> None:
    """What the hub_faults rig met after a partition healed (stop 24's CI): three uploads the
    agent had sent while the link was down arrive at once, [w0], [w0..w3] and [w0..w5], all
    checked before the first is stored. The first commits alone; the other two share the next
    group, where [w0..w3] moves the device's head to w3 and [w0..w5] then repeats w0. That
    repeat was refused as a ``fork`` (409: the agent's uplink stops for good) because the
    group compared it with the head it had moved, not with what an earlier group stored."""

    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    uploads = [upload_of(dev.window(3)) for _ in range(6)]
    store = Store.open(s.db_url)
    try:
        ing = ingestor(store, s.data_dir)
        first, second, third = (
            ing.check_many(uploads[:n], now_ns=1) for n in (1, 4, 6)
        )  # all checked before anything is stored
        [(done, refusal)] = ing.store_checked([first])
        assert refusal is None and [r.status for r in done] == ["accepted"]
        (done2, refusal2), (done3, refusal3) = ing.store_checked([second, third])
    finally:
        store.close()
    assert refusal2 is None and refusal3 is None, (refusal2, refusal3)
    assert [r.status for r in done2] == ["duplicate"] + ["accepted"] * 3
    assert [r.status for r in done3] == ["duplicate"] * 4 + ["accepted"] * 2
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == 6


# a request: a run of windows [start, start + length); when it is checked, in which group
_requests = st.lists(
    st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(0, 3), st.integers(0, 3)),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=_requests)
def test_retries_of_one_device_in_any_grouping_are_never_a_fork(
    hub: tuple[TestClient, HubSettings], requests: list[tuple[int, int, int, int]]
) -> None:
    """One device's genuine uploads (runs of its windows, as retries and backlogs send them)
    checked at any moment and stored in any grouping: each proof is accepted once, every
    repeat is a duplicate, a run that starts past the head is out of order, never a fork
    (the bytes are the device's own). Group g stores the requests assigned to it; a request
    is checked before group ``min(checked_at, g)`` is stored."""
    from cloud_sync import chain

    client, s = hub
    dev = Device()
    utid = register_software(client, s, dev)
    uploads = [upload_of(dev.window(2)) for _ in range(9)]
    store = Store.open(s.db_url)
    accepted: list[int] = []
    try:
        ing = ingestor(store, s.data_dir)
        checked: dict[int, Any] = {}
        for g in range(4):
            for i, (start, n, checked_at, group) in enumerate(requests):
                if i not in checked and min(checked_at, group) <= g:
                    checked[i] = ing.check_many(uploads[start : start + n], now_ns=1)
            members = [i for i, r in enumerate(requests) if r[3] == g]
            if not members:
                continue
            for i, (done, refusal) in zip(
                members, ing.store_checked([checked[i] for i in members]), strict=True
            ):
                start, n = requests[i][:2]
                assert refusal is None or isinstance(refusal[1], chain.OutOfOrder), refusal
                assert [r.window for r in done] == list(range(start, start + len(done)))
                accepted += [r.window for r in done if r.status == "accepted"]
    finally:
        store.close()
    assert sorted(accepted) == list(range(len(accepted)))  # each once, from window 0 on
    assert client.get(f"/v1/devices/{utid}").json()["windows"] == len(accepted)
