"""Accepting uploaded micro-proofs: the I/O shell around the pure rules of ``chain.py``.

The rules (canonical form, signature, enrollment, chain, sequence and gap; docs/protocol.md
numbers them) live in ``cloud_sync/chain.py`` and touch no database. This module keeps what
needs one: the caches of device rows and parsed keys, the reads, and the one transaction
that stores accepted windows, their leaves, the moved heads, the transparency-log entries
and the anomaly index together (group commit, cloud_sync/groupcommit.py, ADR 0009).

An upload runs in two halves:
- ``check_many``, on the event loop, outside any write transaction: (1) parse, (2) a
  duplicate of stored bytes, (3) admit, (4) signature, (7) leaves, per proof. Device rows
  come from a cache however old they are: a row's UTID, key and kind never change, and the
  write below moves a head only while it is still the window the checks chained onto and the
  device is not revoked, so what a stale row let through is refused there. No refusal is made
  on a cached row (a revoked one is read again), so the cache only saves queries: one a
  proof otherwise, for a fleet whose gateways upload one window every few seconds.
- ``store_checked``, in the writer thread, one transaction for a group of requests:
  (5, 6) ``chain.advance`` on each device's head, (2) a proof of a window already accepted
  with the same payload is a duplicate (``chain.same_window``), then (8) the writes. A race
  with another writer (a replica) rolls the group back, and each request is stored again
  one proof at a time on fresh reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives import serialization

from attestation.cose import PublicKey
from attestation.microproof import SignedMicroProof
from cloud_sync import chain
from cloud_sync.log import HubLog
from cloud_sync.settings import HubLimits
from cloud_sync.storage import (
    Accepted,
    Connect,
    DeviceRow,
    Store,
    Transaction,
    WindowRow,
    WriteRace,
)

__all__ = [
    "BatchIndex",
    "CheckedRequest",
    "IngestResult",
    "Ingestor",
    "Outcome",
    "ProofUpload",
]

_MAX_CACHED_DEVICES = 65_536  # beyond this the cache starts again: memory stays bounded

T = TypeVar("T")


class BatchIndex(Protocol):
    """An index kept of accepted proofs (anomalies, source gaps), written in their
    transaction."""

    def record(self, batch: Sequence[Accepted], conn: Transaction, now_ns: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ProofUpload:
    cose: bytes
    leaves: bytes  # the window's leaves back to back: a CBOR sequence (RFC 8742; ADR 0008)


@dataclass(frozen=True, slots=True)
class IngestResult:
    window: int
    status: str  # "accepted" | "duplicate"
    first_seq: int
    last_seq: int
    readings: int = 0  # readings this call accepted (0 for a duplicate); not in the JSON

    @classmethod
    def of(cls, row: WindowRow, status: str) -> IngestResult:
        accepted = row.count if status == "accepted" else 0
        return cls(row.window, status, row.first_seq, row.last_seq, accepted)

    def as_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "status": self.status,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }


Outcome = tuple[list[IngestResult], tuple[int, chain.Refusal] | None]
"""A request's stored results, and its refused proof (index, refusal) if one was."""
Checked = IngestResult | tuple[WindowRow, SignedMicroProof]
"""A proof after its own checks: a duplicate's result, or the row to store."""


@dataclass
class CheckedRequest:
    """A request's proofs after ``Ingestor.check_many``, waiting to be chained and stored."""

    uploads: Sequence[ProofUpload]
    caller: str | None
    items: list[Checked] = field(default_factory=list)  # one a proof, up to a refused one
    refusal: tuple[int, chain.Refusal] | None = None
    now_ns: int = 0  # when its checks ran: the stored windows' received_ns


@dataclass
class _Group:
    """A group's accepted proofs before they are written, and the heads they move."""

    batch: list[Accepted] = field(default_factory=list)
    heads: dict[str, DeviceRow] = field(default_factory=dict)  # as the batch leaves them
    expected: dict[str, int] = field(default_factory=dict)  # as the database had them
    done: dict[bytes, IngestResult] = field(default_factory=dict)  # by COSE SHA-256
    # each (utid, window) the batch accepts: its COSE bytes, for chain.same_window
    windows: dict[tuple[str, int], tuple[bytes, IngestResult]] = field(default_factory=dict)


class Ingestor:
    """Checks proofs with the rules of ``chain`` and stores the accepted ones, with their
    log entries and ``indexes`` (anomalies, source gaps), in one transaction; caches parsed
    device keys and rows."""

    def __init__(
        self,
        store: Store,
        limits: HubLimits,
        *,
        allow_software_keys: bool,
        log: HubLog,
        indexes: Sequence[BatchIndex] = (),
    ) -> None:
        self.store = store
        self.log = log
        self.indexes = tuple(indexes)
        self.policy = chain.Policy(allow_software_keys, limits.proof)
        self._keys: dict[str, PublicKey] = {}
        self._rows: dict[str, DeviceRow] = {}  # utid -> its row as last read or written
        self._writer = store.writer()  # store_checked's transactions

    # --- the checks: CPU work outside any write transaction -----------------------------------
    def check_many(
        self, uploads: Sequence[ProofUpload], *, now_ns: int, caller: str | None = None
    ) -> CheckedRequest:
        """Steps (1)-(4) and (7) for each proof of a request, on its own; ``caller`` is the
        device a bearer token proved. Stops at the first refused proof."""
        checked = CheckedRequest(uploads, caller, now_ns=now_ns)
        with self.store.reads() as connect:
            for i, upload in enumerate(uploads):
                try:
                    checked.items.append(self._check(upload, now_ns, caller, connect))
                except chain.Refusal as err:
                    checked.refusal = (i, err.detached())
                    break
        return checked

    def _check(
        self,
        upload: ProofUpload,
        now_ns: int,
        caller: str | None,
        connect: Connect,
        *,
        cached: bool = True,
    ) -> Checked:
        """Steps (1)-(4) and (7): a duplicate's result, or the row to store. ``cached``: the
        device row may come from the cache (a request's checks), else it is read now."""
        smp = chain.parse(upload.cose, self.policy)  # (1)
        mp = smp.proof
        digest = hashlib.sha256(upload.cose).digest()
        if cached:
            found = self._cached_device(smp.utid, connect)
        else:
            found = self.store.device(smp.utid, connect())
        if found is not None and (done := self._stored(digest, found, smp, connect)):
            return done  # (2) these bytes again: answered even for a device revoked since
        device = chain.admit(found, smp.utid, caller, self.policy)  # (3)
        chain.check_signature(smp, self._key(device), device.public_key)  # (4)
        if done := self._stored(digest, device, smp, connect, same_payload=True):
            return done  # (2) the same window signed again
        chain.check_leaves(smp, upload.leaves, self.policy)  # (7)
        row = WindowRow(
            utid=device.utid,
            window=mp.window,
            first_seq=mp.first_seq,
            last_seq=mp.last_seq,
            first_ts_ns=mp.first_ts_ns,
            last_ts_ns=mp.last_ts_ns,
            count=mp.count,
            root=mp.root,
            prev=mp.prev,
            cose=upload.cose,
            cose_sha256=digest,
            gaps=len(mp.gaps),
            received_ns=now_ns,
        )
        return row, smp

    def _stored(
        self,
        digest: bytes,
        device: DeviceRow,
        smp: SignedMicroProof,
        connect: Connect,
        *,
        same_payload: bool = False,
    ) -> IngestResult | None:
        """The stored proof this one repeats, as a duplicate: the same bytes (an idempotent
        retry, or one another writer stored after our first look), or, with ``same_payload``
        (only once the signature holds), the stored proof of its window when
        ``chain.same_window`` says it is that window signed again. Looked up only when the
        head already reached the proof's window: a window past it cannot have been stored."""
        window = smp.proof.window
        if window > device.head_window:
            return None
        # the same bytes name the same (utid, window): looked up by the table's one key
        stored = self.store.window_at(device.utid, window, connect())
        if stored is None:
            return None
        if stored.cose_sha256 == digest or (same_payload and chain.same_window(smp, stored.cose)):
            return IngestResult.of(stored, "duplicate")
        return None

    def _cached_device(self, utid: str, connect: Connect) -> DeviceRow | None:
        """The device's row for a request's checks: the cached one unless it is revoked (a
        refusal is made on a fresh read, so a device restored since is admitted)."""
        cached = self._rows.get(utid)
        if cached is not None and not cached.revoked:
            return cached
        row = self.store.device(utid, connect())
        if row is not None:
            self._remember(row)
        return row

    def warm(self) -> int:
        """Cache the rows of the devices most recently seen, up to half the cache, in one
        query; returns how many. A hub that starts (a restart, a deploy, a new replica) is
        uploaded to by its whole fleet within one period, and read each row alone before: a
        query a gateway (py-spy at 14,000 gateways: 6.5 % of a fresh hub's GIL-held time),
        enough to put it behind at 15,000 (docs/performance.md)."""
        rows = self.store.recent_devices(_MAX_CACHED_DEVICES // 2)
        for row in rows:
            self._remember(row)
        return len(rows)

    def _remember(self, row: DeviceRow) -> None:
        _cache(self._rows, row.utid, row)

    def _key(self, device: DeviceRow) -> PublicKey:
        key = self._keys.get(device.utid)
        if key is None:
            loaded = serialization.load_der_public_key(device.public_key)
            if not isinstance(loaded, PublicKey):
                raise chain.UnknownDevice(f"{device.utid} has an unusable key")
            key = _cache(self._keys, device.utid, loaded)  # ~2.1 KB a key
        return key

    # --- the writes: one transaction a group ---------------------------------------------------
    def store_checked(self, requests: Sequence[CheckedRequest]) -> list[Outcome]:
        """Steps (5), (6) and (8) for checked requests, in order, in one transaction (one
        commit for all of them: a group commit). A refused proof ends its own request only;
        the proofs before it are stored. A race with another writer (a replica) rolls the
        group back and stores each request again one proof at a time."""
        outcomes: list[Outcome] = []
        last_seen = max((r.now_ns for r in requests), default=0)  # the devices' last_seen
        try:
            with self._writer.transaction() as conn:
                group = _Group()  # shared: a later request sees the heads earlier ones moved
                for request in requests:
                    outcomes.append(self._chain_request(conn, group, request))
                self._write(conn, group, last_seen)
        except WriteRace:  # a moved head or a unique key another writer took
            return [self._one_by_one(r) for r in requests]
        for row in group.heads.values():  # committed: the heads as they now stand
            self._remember(row)
        return outcomes

    def _write(self, conn: Transaction, group: _Group, now_ns: int) -> None:
        """(8) The group's windows, leaves and heads, their log entries and indexes: all in
        ``conn``'s transaction, so the log holds exactly the windows stored."""
        if not group.batch:
            return
        self.store.store_windows(
            group.batch, expected_heads=group.expected, now_ns=now_ns, conn=conn
        )
        self.log.append([(a.row.utid, a.row.window, a.row.cose) for a in group.batch], conn)
        for index in self.indexes:
            index.record(group.batch, conn, now_ns)

    def _chain_request(self, conn: Transaction, group: _Group, request: CheckedRequest) -> Outcome:
        results: list[IngestResult] = []
        for i, item in enumerate(request.items):
            try:
                results.append(
                    self._chain_in(conn, group, item, request.uploads[i], request.caller)
                )
            except chain.Refusal as err:
                return results, (i, err.detached())  # the ones before it are stored
        return results, request.refusal

    def _chain_in(
        self,
        conn: Transaction,
        group: _Group,
        checked: Checked,
        upload: ProofUpload,
        caller: str | None,
    ) -> IngestResult:
        """Steps (5)-(6) for a checked proof against the heads inside ``conn``, as the
        group's earlier proofs move them; an accepted one joins ``group.batch``."""
        if isinstance(checked, IngestResult):  # stored by an earlier request
            return checked
        row, smp = checked
        if (earlier := group.done.get(row.cose_sha256)) is not None:  # sent twice
            return dataclasses.replace(earlier, status="duplicate")
        same = group.windows.get((row.utid, row.window))
        if same is not None and chain.same_window(smp, same[0]):  # signed twice
            return dataclasses.replace(same[1], status="duplicate")
        device = group.heads.get(row.utid)
        if device is None:  # first proof of this device in the group: its head now
            first = self._head_for(smp, row, conn, caller)
            if isinstance(first, IngestResult):
                return first
            device = first
            group.expected[row.utid] = device.head_window
        elif row.window <= device.head_window:
            # at or below the head this group moved: an earlier group may have stored it
            # (uploads a healed partition delivers at once, all checked before the first
            # was stored); a repeat of that is a duplicate, only a different proof a fork
            stored = self._stored(row.cose_sha256, device, smp, lambda: conn, same_payload=True)
            if stored is not None:
                return stored
        head = chain.advance(_head(device), smp, row.cose_sha256)  # (5), (6)
        group.batch.append(Accepted(row, upload.leaves, smp.proof))
        group.heads[device.utid] = _moved(device, head)
        result = group.done[row.cose_sha256] = IngestResult.of(row, "accepted")
        group.windows[(row.utid, row.window)] = (row.cose, result)
        return result

    def _head_for(
        self, smp: SignedMicroProof, row: WindowRow, conn: Transaction, caller: str | None
    ) -> DeviceRow | IngestResult:
        """The device's head for the group's first proof of it, or the stored duplicate.

        Optimistic: the cached row when the device may upload and the proof chains onto it.
        No query is needed then, because ``store_windows`` moves the head only ``WHERE`` it
        is still that window and the device is not revoked; if another writer moved it or
        the device was revoked since, the group rolls back and ``_one_by_one`` stores it
        again on fresh reads. Otherwise (nothing cached, or the proof does not chain onto
        the cached head) the row is read inside ``conn``, as it stands now.
        """
        cached = self._rows.get(row.utid)
        if cached is not None:
            try:
                device = chain.admit(cached, row.utid, caller, self.policy)
                chain.advance(_head(device), smp, row.cose_sha256)
            except chain.Refusal:
                pass  # perhaps stale: decide on the row as it stands
            else:
                return device
        found = self.store.device(row.utid, conn)
        if found is not None:
            self._remember(found)  # committed data: good for the checks
            stored = self._stored(row.cose_sha256, found, smp, lambda: conn, same_payload=True)
            if stored is not None:
                return stored  # (2) as in _check, even for a device revoked since
        return chain.admit(found, row.utid, caller, self.policy)  # (3) again: may be stale

    def _one_by_one(self, request: CheckedRequest) -> Outcome:
        """A request after its group lost a race: each proof checked and stored again in its
        own transaction, on fresh reads."""
        results: list[IngestResult] = []
        for i, upload in enumerate(request.uploads):
            try:
                results.append(self.ingest(upload, now_ns=request.now_ns, caller=request.caller))
            except chain.Refusal as err:
                return results, (i, err.detached())
        return results, None

    def ingest(
        self, upload: ProofUpload, *, now_ns: int, caller: str | None = None
    ) -> IngestResult:
        """Check and store one proof in its own transaction, on fresh reads (no cached row);
        raises the ``chain.Refusal`` if it is refused."""
        single = CheckedRequest([upload], caller, now_ns=now_ns)
        with self.store.reads() as connect:
            checked = self._check(upload, now_ns, caller, connect, cached=False)
        if isinstance(checked, IngestResult):
            return checked
        single.items.append(checked)
        utid = checked[0].utid
        for _ in range(2):  # another writer may move the head between our read and our write
            try:
                with self._writer.fresh() as conn:
                    group = _Group()
                    results, refusal = self._chain_request(conn, group, single)
                    if refusal is not None:
                        raise refusal[1]
                    self._write(conn, group, now_ns)
            except WriteRace:
                self._rows.pop(utid, None)  # read the head inside the next transaction
                continue
            for row in group.heads.values():
                self._remember(row)
            return results[0]
        raise chain.Fork(f"window {checked[0].window} lost a race with a different proof")

    def close(self) -> None:
        """Close the write connection (the next group would open another)."""
        self._writer.close()


def _cache(cache: dict[str, T], utid: str, value: T) -> T:
    """``value`` into a cache of the checks by UTID (device rows, loaded keys); a cache at
    ``_MAX_CACHED_DEVICES`` starts again first, so a fleet larger than it bounds its memory."""
    if len(cache) >= _MAX_CACHED_DEVICES and utid not in cache:
        cache.clear()
    cache[utid] = value
    return value


def _head(device: DeviceRow) -> chain.Head:
    return chain.Head(device.head_window, device.head_hash, device.head_last_seq)


def _moved(device: DeviceRow, head: chain.Head) -> DeviceRow:
    return dataclasses.replace(
        device, head_window=head.window, head_hash=head.hash, head_last_seq=head.last_seq
    )
