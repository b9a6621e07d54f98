"""The fleet bench's load: its upload bodies are the CBOR an agent sends, and a seeded log is
the RFC 9162 tree over its entries, node for node."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from attestation import merkle
from benchmarks.fleetload import SimDevice, seed_log, templates, upload_body
from cloud_sync.storage import Store
from cloud_sync.storage.log import LogRepo


@settings(max_examples=60)
@given(cose=st.binary(max_size=70_000), leaves=st.binary(max_size=70_000))
def test_an_upload_body_in_parts_is_what_cbor2_encodes(cose: bytes, leaves: bytes) -> None:
    parts = upload_body(cose, leaves)
    assert b"".join(parts) == cbor2.dumps({"proofs": [{"cose": cose, "leaves": leaves}]})


def test_simulated_devices_chain_their_windows_on_shared_leaves() -> None:
    windows = templates(3, 10)
    a, b = SimDevice.make(windows), SimDevice.make(windows)
    assert a.utid != b.utid and len(a.coses) == 3
    assert windows[1].proof.first_seq == 10 and len(set(a.coses) | set(b.coses)) == 6


def test_a_seeded_log_is_the_rfc9162_tree_of_its_entries(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        root = seed_log(store.engine, 37, devices_n=5, cose_size=100)
        with store.engine.connect() as conn:
            hashes = [
                bytes(h)
                for (h,) in conn.execute(text("SELECT entry_hash FROM log_entries ORDER BY idx"))
            ]
            rows = conn.execute(text("SELECT utid, head_window FROM devices")).all()
            heads: dict[str, int] = {r[0]: r[1] for r in rows}
        assert root == merkle.root(hashes) and len(hashes) == 37
        assert sorted(heads.values()) == [6, 6, 6, 7, 7]  # 37 entries: devices 0, 1 have 8
        # the stored nodes serve proofs: every inclusion path and a consistency proof verify
        with LogRepo(store.engine).nodes() as node:
            for i in (0, 17, 36):
                path = merkle.inclusion_path_from(node, i, 37)
                merkle.verify_inclusion(hashes[i], i, 37, path, root)
            proof = merkle.consistency_proof_from(node, 20, 37)
        merkle.verify_consistency(20, 37, merkle.root(hashes[:20]), root, proof)
        assert (
            hashes[3]
            == hashlib.sha256(b"\x00" + b"seed" + (3).to_bytes(8, "big") + bytes(88)).digest()
        )
    finally:
        store.close()
