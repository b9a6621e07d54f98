"""Load for ``factoryops bench fleet``: many devices' signed windows, made cheaply, and the
databases they upload into, seeded through the hub's storage layer.

Every simulated device uploads the same readings for window k (seq, time stamps and values),
so a window's leaves, root and statistics are computed once and shared; each device still
signs its own chain (its own key, ``prev`` and COSE bytes), which is all the hub's checks and
writes depend on. Seeding writes rows straight into the hub's tables with the storage
layer's bulk statements (``cloud_sync.storage.bulk``), which is how a log of 10^6 entries is
made in about a minute instead of hours of uploads: the seeded log is a valid RFC 9162 tree
over its entries (the hub's checkpoint is checked against the root computed here), but its
entries are synthetic bytes, not signed proofs, and its windows keep an 8-byte stand-in for
their leaves (the leaves table's index has its full size; its blobs, ~28 KB each and
written at the end of the table, would only fill the disk).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, update

from attestation import cborsafe, merkle
from attestation.microproof import (
    GENESIS_PREV,
    MicroProof,
    chain_hash,
    compute_stats,
    sign_microproof,
)
from attestation.reading import Reading, encode_leaf
from attestation.signers.software import SoftwareSigner
from attestation.utid import utid_bytes, utid_text
from cloud_sync.storage.bulk import BulkInsert
from cloud_sync.storage.tables import devices, log_entries, log_nodes, window_leaves, windows

__all__ = [
    "SimDevice",
    "WindowTemplate",
    "device_values",
    "seed_devices",
    "seed_log",
    "templates",
    "upload_body",
    "window_values",
]

_T0_NS = 1_700_000_000_000_000_000


@dataclass(frozen=True, slots=True)
class WindowTemplate:
    """Window k's readings as every simulated device uploads them: the leaves back to back
    and the payload before its ``prev`` is set."""

    leaves: bytes
    proof: MicroProof


def templates(count: int, per_proof: int) -> list[WindowTemplate]:
    out = []
    for w in range(count):
        first = w * per_proof
        rs = [
            Reading(s, _T0_NS + s * 1_000_000, f"s{s % 8}", float(s % 1000), "u")
            for s in range(first, first + per_proof)
        ]
        leaves = [encode_leaf(r) for r in rs]
        proof = MicroProof(
            window=w,
            first_seq=first,
            last_seq=first + per_proof - 1,
            first_ts_ns=rs[0].ts_ns,
            last_ts_ns=rs[-1].ts_ns,
            count=per_proof,
            root=merkle.root([hashlib.sha256(b"\x00" + x).digest() for x in leaves]),
            prev=GENESIS_PREV,
            stats=compute_stats(rs),
        )
        out.append(WindowTemplate(b"".join(leaves), proof))
    return out


@dataclass(frozen=True, slots=True)
class SimDevice:
    """A simulated gateway: its key and its chain of signed windows (COSE bytes)."""

    utid: str
    public_key_der: bytes
    coses: tuple[bytes, ...]

    @classmethod
    def make(cls, windows: Sequence[WindowTemplate], iat: int = 1_700_000_000) -> SimDevice:
        signer = SoftwareSigner.generate()
        der = signer.public_key_der()
        prev, coses = GENESIS_PREV, []
        for t in windows:
            cose = sign_microproof(dataclasses.replace(t.proof, prev=prev), signer, iat=iat)
            coses.append(cose)
            prev = chain_hash(cose)
        return cls(utid_text(utid_bytes(der)), der, tuple(coses))


# {"proofs": [{"cose": ..., "leaves": ...}]}: map(1), text "proofs", array(1), map(2), "cose"
_ONE_PROOF = b"\xa1\x66proofs\x81\xa2\x64cose"
_LEAVES_KEY = b"\x66leaves"


def upload_body(cose: bytes, leaves: bytes) -> list[bytes]:
    """A one-proof ``POST /v1/proofs`` body as parts to write one after the other (the same
    bytes as ``cbor2.dumps``): a window's leaves, shared by every device, are never copied."""
    return [
        _ONE_PROOF,
        cborsafe.head(2, len(cose)),
        cose,
        _LEAVES_KEY,
        cborsafe.head(2, len(leaves)),
        leaves,
    ]


def device_values(
    utid: str, name: str, *, public_key: bytes = b"", now_ns: int = 0, head_window: int = -1
) -> dict[str, object]:
    """A ``devices`` row written straight into a database: a software key registered as in
    development (no fleet CA certificate), its chain head at ``head_window``."""
    return {
        "utid": utid,
        "public_key": public_key,
        "key_kind": "software",
        "certificate": b"",
        "name": name,
        "site": "default",
        "revoked": False,
        "created_ns": now_ns,
        "head_window": head_window,
        "head_hash": None,
        "head_last_seq": -1,
        "last_seen_ns": None,
        "n_readings": 0,
    }


def window_values(
    utid: str,
    window: int,
    cose: bytes,
    prev: bytes,
    *,
    count: int,
    root: bytes = bytes(32),
    t0_ns: int = 0,
    received_ns: int = 0,
) -> dict[str, object]:
    """A ``windows`` row written straight into a database: ``count`` readings a window, seqs
    and timestamps numbered on from window 0; ``cose`` stands in for the proof (nothing
    verifies it), its hash is the row's ``cose_sha256``."""
    first = window * count
    return {
        "utid": utid,
        "window": window,
        "first_seq": first,
        "last_seq": first + count - 1,
        "first_ts_ns": t0_ns + first,
        "last_ts_ns": t0_ns + first + count - 1,
        "count": count,
        "root": root,
        "prev": prev,
        "cose": cose,
        "cose_sha256": chain_hash(cose),
        "gaps": 0,
        "received_ns": received_ns,
    }


def _device_row(utid: str, der: bytes, name: str, now_ns: int) -> tuple[object, ...]:
    values = device_values(utid, name, public_key=der, now_ns=now_ns)
    return tuple(values.get(c) for c in _DEVICES.columns)  # newer nullable columns: NULL


_DEVICES = BulkInsert(devices)
_WINDOWS = BulkInsert(windows)
_LEAVES = BulkInsert(window_leaves)
_ENTRIES = BulkInsert(log_entries)
_NODES = BulkInsert(log_nodes)
_SEED_CHUNK = 50_000
# SQLite's page cache while seeding (KiB): its default 2 MiB spills the random index inserts'
# pages to the WAL again and again (a 10^6-entry seed wrote >1 GB of WAL in 10 minutes)
_SEED_CACHE_KIB = 2 << 20


def seed_devices(engine: Engine, fleet: Sequence[SimDevice], prefix: str = "gw") -> None:
    """Register devices by writing their rows (what ``POST /v1/devices`` stores for a
    software key, without the fleet CA's certificate): one transaction."""
    now = time.time_ns()
    with engine.begin() as conn:
        _DEVICES(
            conn,
            [
                _device_row(d.utid, d.public_key_der, f"{prefix}-{i}", now)
                for i, d in enumerate(fleet)
            ],
        )


def _chunks(rows: Iterator[tuple[object, ...]]) -> Iterator[list[tuple[object, ...]]]:
    chunk: list[tuple[object, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == _SEED_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _seed_cose(i: int, size: int) -> bytes:
    return b"seed" + i.to_bytes(8, "big") + bytes(size - 12)


def seed_log(engine: Engine, entries: int, *, devices_n: int, cose_size: int) -> bytes:
    """Seed ``entries`` accepted windows of ``devices_n`` seed devices and the log over them:
    window rows (synthetic COSE bytes of ``cose_size``), stand-in leaves, log entries in
    order and every perfect subtree node the hub keeps. Entry i is window i // devices_n of
    seed device i % devices_n (devices interleave, as a fleet's uploads do). Returns the
    tree's RFC 9162 root."""
    now = time.time_ns()
    names = [f"utid:seed{d:060d}" for d in range(devices_n)]
    leaves = [hashlib.sha256(b"\x00" + _seed_cose(i, cose_size)).digest() for i in range(entries)]

    def window_rows() -> Iterator[tuple[object, ...]]:
        for i in range(entries):
            w, cose = i // devices_n, _seed_cose(i, cose_size)
            prev = chain_hash(_seed_cose(i - devices_n, cose_size)) if w else GENESIS_PREV
            values = window_values(
                names[i % devices_n],
                w,
                cose,
                prev,
                count=1000,
                root=leaves[i],
                t0_ns=_T0_NS,
                received_ns=now,
            )
            yield tuple(values.get(c) for c in _WINDOWS.columns)  # newer columns: NULL

    levels = [leaves]
    while len(levels[-1]) > 1:  # a last odd node has no parent yet: strict=False
        below = levels[-1]
        levels.append(
            [merkle.hash_children(a, b) for a, b in zip(below[::2], below[1::2], strict=False)]
        )
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":  # one long transaction: keep its pages in memory
            conn.exec_driver_sql(f"PRAGMA cache_size = -{_SEED_CACHE_KIB}")
        _DEVICES(conn, [_device_row(n, b"", n[5:], now) for n in names])
        for chunk in _chunks(window_rows()):
            _WINDOWS(conn, chunk)
        stand_ins = ((names[i % devices_n], i // devices_n, b"seedleaf") for i in range(entries))
        for chunk in _chunks(stand_ins):
            _LEAVES(conn, chunk)
        rows = ((i, names[i % devices_n], i // devices_n, h) for i, h in enumerate(leaves))
        for chunk in _chunks(rows):
            _ENTRIES(conn, chunk)
        for level, nodes in enumerate(levels[1:], start=1):
            for chunk in _chunks((level, i, h) for i, h in enumerate(nodes)):
                _NODES(conn, chunk)
        heads = []  # each seed device's head: its last window
        for d in range(min(devices_n, entries)):
            last = d + (entries - 1 - d) // devices_n * devices_n
            heads.append(
                {
                    "u": names[d],
                    "w": last // devices_n,
                    "h": chain_hash(_seed_cose(last, cose_size)),
                }
            )
        conn.execute(_SEED_HEAD, heads)
    return merkle.range_hash(lambda level, i: levels[level][i], 0, entries)


_SEED_HEAD = (
    update(devices)
    .where(devices.c.utid == bindparam("u"))
    .values(head_window=bindparam("w"), head_hash=bindparam("h"))
)
