"""Accepting uploaded micro-proofs: verify every link, then store in one transaction.

Steps, each with its own refusal (docs/protocol.md):
1. parse the COSE micro-proof and its payload
2. duplicate: these exact bytes were already accepted -> "duplicate" (idempotent retry)
3. device: enrolled, not revoked, key kind allowed by policy
4. signature under the device's enrolled key
5. chain: the next window index, and prev = SHA-256 of the device's last accepted proof
6. seqs: first seq follows the last accepted one, or gap records cover the hole
7. leaves: count matches, each decodes strictly, seqs consecutive, RFC 9162 root matches
   (attestation.leafbatch: in C when built, ~0.2 us a leaf; ADR 0007; they arrive and are
   stored back to back in one byte string, ADR 0008)
   Steps 2-4 read the device from a cache of rows (at most DEVICE_ROW_TTL_S old). The write
   moves a head only while it is still the window the checks chained onto and the device is
   not revoked (``Ingestor._head_for``), so what a stale row let through (a device revoked
   since, from this process or another) is refused there: the cache only saves queries.
8. store window + its leaves + new head atomically (a concurrent writer -> re-check once);
   the hub stores concurrent requests in one transaction (group commit,
   cloud_sync/groupcommit.py, ADR 0009)
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from attestation.cose import PublicKey
from attestation.errors import AttestationError, BrokenLink, MalformedInput
from attestation.leafbatch import sequence_root
from attestation.microproof import (
    GENESIS_PREV,
    SignedMicroProof,
    parse_microproof,
    verify_microproof_signature,
)
from cloud_sync.errors import ApiError
from cloud_sync.settings import HubLimits
from cloud_sync.storage import Accepted, DeviceRow, HeadMoved, Store, WindowRow

__all__ = [
    "DEVICE_ROW_TTL_S",
    "CheckedRequest",
    "IngestResult",
    "Ingestor",
    "Outcome",
    "ProofUpload",
]

DEVICE_ROW_TTL_S = 2.0
"""How old a cached device row may be when a request's checks use it (steps 2-4)."""
_MAX_CACHED_DEVICES = 65_536  # beyond this the cache starts again: memory stays bounded


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


Outcome = tuple[list[IngestResult], tuple[int, ApiError] | None]
"""A request's stored results, and its refused proof (index, refusal) if one was."""
Checked = IngestResult | tuple[WindowRow, SignedMicroProof, DeviceRow]
"""A proof after its own checks: a duplicate's result, or the row to store and its device."""


@dataclass
class CheckedRequest:
    """A request's proofs after ``Ingestor.check_many``, waiting to be chained and stored."""

    uploads: Sequence[ProofUpload]
    caller: str | None
    items: list[Checked] = field(default_factory=list)  # one a proof, up to a refused one
    refusal: tuple[int, ApiError] | None = None
    now_ns: int = 0  # when its checks ran: the stored windows' received_ns


@dataclass
class _Chain:
    """A group's accepted proofs before they are written, and the heads they move."""

    batch: list[Accepted] = field(default_factory=list)
    heads: dict[str, DeviceRow] = field(default_factory=dict)  # as the batch leaves them
    expected: dict[str, int] = field(default_factory=dict)  # as the database had them
    done: dict[bytes, IngestResult] = field(default_factory=dict)  # by COSE SHA-256


class Ingestor:
    """Verifies and stores proofs; holds caches of parsed device keys and device rows."""

    def __init__(self, store: Store, limits: HubLimits, *, allow_software_keys: bool) -> None:
        self.store = store
        self.limits = limits
        self.allow_software_keys = allow_software_keys
        self._keys: dict[str, PublicKey] = {}
        self._rows: dict[str, tuple[int, DeviceRow]] = {}  # utid -> (monotonic ns read, row)
        self._write_conn: Connection | None = None  # store_checked's, kept between groups
        self._write_lock = threading.Lock()
        self._keep_write_conn = store.engine.dialect.name == "sqlite"
        store.on_close.append(self.close)

    def ingest(
        self, upload: ProofUpload, *, now_ns: int, caller: str | None = None
    ) -> IngestResult:
        """Check and store one proof in its own transaction; ``caller`` is the device a bearer
        token proved."""
        checked = self._check(upload, now_ns=now_ns, caller=caller)
        if isinstance(checked, IngestResult):
            return checked
        row, smp, device = checked  # _check already looked for a stored duplicate
        for attempt in range(2):
            if attempt:  # another writer moved the head: its proof may be this one
                device = self._device(smp.utid)
                if (stored := self._stored_since(row.cose_sha256, row.window, device)) is not None:
                    return stored
            self._check_chain(smp, device)  # (5)
            self._check_seqs(smp, device)  # (6)
            try:
                self.store.store_window(  # (8)
                    row,
                    upload.leaves,
                    expected_head=device.head_window,
                    now_ns=now_ns,
                    proof=smp.proof,
                )
                return IngestResult.of(row, "accepted")
            except (HeadMoved, IntegrityError):
                if (done := self.store.window_by_hash(row.cose_sha256)) is not None:
                    return IngestResult.of(done, "duplicate")
        raise ApiError(409, "fork", f"window {row.window} lost a race with a different proof")

    def ingest_many(
        self, uploads: Sequence[ProofUpload], *, now_ns: int, caller: str | None = None
    ) -> Outcome:
        """A request's proofs in one transaction: one commit (one fsync) instead of one a proof.

        Returns the results of the proofs stored and, when one was refused, its index and the
        refusal; the proofs before it are committed. (``check_many`` then ``store_checked``;
        the hub's upload route groups concurrent requests into one ``store_checked``.)
        """
        return self.store_checked([self.check_many(uploads, now_ns=now_ns, caller=caller)])[0]

    def check_many(
        self, uploads: Sequence[ProofUpload], *, now_ns: int, caller: str | None = None
    ) -> CheckedRequest:
        """Steps (1)-(4) and (7) for each proof of a request, on its own: CPU work outside
        any write transaction. Stops at the first refused proof."""
        checked = CheckedRequest(uploads, caller, now_ns=now_ns)
        reads = _Reads(self.store.engine)
        try:
            for i, upload in enumerate(uploads):
                try:
                    checked.items.append(
                        self._check(upload, now_ns=now_ns, caller=caller, reads=reads)
                    )
                except ApiError as err:
                    checked.refusal = (i, err)
                    break
        finally:
            reads.close()
        return checked

    def _cached_device(self, utid: str, connect: Callable[[], Connection]) -> DeviceRow | None:
        now = time.monotonic_ns()
        cached = self._rows.get(utid)
        if cached is not None and now - cached[0] <= DEVICE_ROW_TTL_S * 1e9:
            return cached[1]
        row = self.store.device(utid, connect())
        if row is not None:
            self._remember(row, now)
        return row

    def _remember(self, row: DeviceRow, now: int) -> None:
        if len(self._rows) >= _MAX_CACHED_DEVICES and row.utid not in self._rows:
            self._rows.clear()
        self._rows[row.utid] = (now, row)

    def store_checked(self, requests: Sequence[CheckedRequest]) -> list[Outcome]:
        """Steps (5), (6) and (8) for checked requests, in order, in one transaction (one
        commit for all of them: a group commit). A refused proof ends its own request only;
        the proofs before it are stored. A race with another writer (a replica) rolls the
        group back and stores each request again one proof at a time."""
        outcomes: list[Outcome] = []
        last_seen = max((r.now_ns for r in requests), default=0)  # the devices' last_seen
        try:
            with self._write_transaction() as conn:
                chain = _Chain()  # shared: a later request sees the heads earlier ones moved
                for request in requests:
                    outcomes.append(self._chain_request(conn, chain, request))
                self.store.store_windows(
                    chain.batch, expected_heads=chain.expected, now_ns=last_seen, conn=conn
                )
        except (HeadMoved, IntegrityError):
            return [self._one_by_one(r.uploads, now_ns=r.now_ns, caller=r.caller) for r in requests]
        now = time.monotonic_ns()
        for row in chain.heads.values():  # committed: the heads as they now stand
            self._remember(row, now)
        return outcomes

    @contextmanager
    def _write_transaction(self) -> Iterator[Connection]:
        """A transaction on the writer's own connection, kept from one group to the next on
        SQLite: a pool checkout and return a group cost ~6 % of the hub's CPU a proof
        (measured with 8 and with 1 proof a request). One group at a time holds it (the
        lock); one that fails closes it, so the next group connects afresh. On a database
        server each group checks a connection out of the pool as before, whose ping before
        checkout finds one that a server restart closed (no group fails for it)."""
        if not self._keep_write_conn:
            with self.store.engine.begin() as pooled:
                yield pooled
            return
        with self._write_lock:
            conn = self._write_conn
            if conn is None or conn.closed or conn.invalidated:
                conn = self._write_conn = self.store.engine.connect()
                # an app dropped unclosed (tests) closes it: invalidate() closes the database
                # connection itself, where close() would hand it to a pool that may be gone
                weakref.finalize(self, _drop, conn)
            try:
                with conn.begin():
                    yield conn
            except BaseException:
                self._write_conn = None
                conn.close()
                raise

    def close(self) -> None:
        """Close the write connection (the next group would open another)."""
        with self._write_lock:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None

    def _chain_request(self, conn: Connection, chain: _Chain, request: CheckedRequest) -> Outcome:
        results: list[IngestResult] = []
        for i, item in enumerate(request.items):
            try:
                results.append(self._chain_in(conn, chain, item, request.uploads[i]))
            except ApiError as err:
                return results, (i, err)  # the ones before it are stored
        return results, request.refusal

    def _one_by_one(
        self, uploads: Sequence[ProofUpload], *, now_ns: int, caller: str | None
    ) -> Outcome:
        results: list[IngestResult] = []
        for i, upload in enumerate(uploads):
            try:
                results.append(self.ingest(upload, now_ns=now_ns, caller=caller))
            except ApiError as err:
                return results, (i, err)
        return results, None

    def _chain_in(
        self,
        conn: Connection,
        chain: _Chain,
        checked: Checked,
        upload: ProofUpload,
    ) -> IngestResult:
        """Steps (5)-(6) for a checked proof against the heads inside ``conn``, as the
        request's earlier proofs move them; an accepted one joins ``chain.batch``."""
        if isinstance(checked, IngestResult):  # stored by an earlier request
            return checked
        row, smp, _ = checked
        if (earlier := chain.done.get(row.cose_sha256)) is not None:  # sent twice
            return dataclasses.replace(earlier, status="duplicate")
        device = chain.heads.get(row.utid)
        if device is None:  # first proof of this device in the group: its head now
            first = self._head_for(smp, row, conn)
            if isinstance(first, IngestResult):
                return first
            device = first
            chain.expected[row.utid] = device.head_window
        self._check_chain(smp, device)  # (5)
        self._check_seqs(smp, device)  # (6)
        chain.batch.append(Accepted(row, upload.leaves, smp.proof))
        chain.heads[device.utid] = dataclasses.replace(
            device,
            head_window=row.window,
            head_hash=row.cose_sha256,
            head_last_seq=row.last_seq if row.count else device.head_last_seq,
        )
        result = chain.done[row.cose_sha256] = IngestResult.of(row, "accepted")
        return result

    def _head_for(
        self, smp: SignedMicroProof, row: WindowRow, conn: Connection
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
                device = self._admit(cached[1], row.utid)
                self._check_chain(smp, device)
                self._check_seqs(smp, device)
            except ApiError:
                pass  # perhaps stale: decide on the row as it stands
            else:
                return device
        found = self.store.device(row.utid, conn)
        if found is not None:
            self._remember(found, time.monotonic_ns())  # committed data: good for the checks
            if stored := self._stored_since(row.cose_sha256, row.window, found, conn):
                return stored  # (2) as in _check, even for a device revoked since
        return self._admit(found, row.utid)  # (3) again: the checks' row may be stale

    def _stored_since(
        self, cose_sha256: bytes, window: int, device: DeviceRow, conn: Connection | None = None
    ) -> IngestResult | None:
        """The stored proof with these bytes, if any: an idempotent retry, or a duplicate
        another writer (a replica, a racing retry) stored after our first look. Looked up
        only when the device's head already reached the proof's window: a window past the
        head cannot have been stored (one query saved per proof on the common path)."""
        if window > device.head_window:
            return None
        done = self.store.window_by_hash(cose_sha256, conn)
        return None if done is None else IngestResult.of(done, "duplicate")

    def _check(
        self,
        upload: ProofUpload,
        *,
        now_ns: int,
        caller: str | None,
        reads: _Reads | None = None,
    ) -> Checked:
        """Steps (1)-(4) and (7): a duplicate's result, or the row to store and its device.
        With ``reads`` (a request's checks) device rows may come from the cache; without
        (``ingest``, which stores what it checked) they are read now."""
        try:
            smp = parse_microproof(upload.cose)  # (1)
        except AttestationError as err:
            raise ApiError(400, "malformed_proof", str(err)) from err
        mp = smp.proof
        digest = hashlib.sha256(upload.cose).digest()
        if reads is None:
            found = self.store.device(smp.utid)
        else:
            found = self._cached_device(smp.utid, reads.connection)
        if found is not None and mp.window <= found.head_window:
            conn = None if reads is None else reads.connection()
            if done := self._stored_since(digest, mp.window, found, conn):
                return done  # (2), answered even for a device revoked since
        device = self._admit(found, smp.utid)  # (3)
        if caller is not None and caller != device.utid:
            raise ApiError(403, "wrong_device", f"the token is for {caller}, not {device.utid}")
        if device.key_kind == "tpm" and caller is None:
            # enrolled devices authenticate (challenge -> token) before uploading
            raise ApiError(
                401, "token_required", "get a device token: POST /v1/devices/{utid}/token"
            )
        try:  # (4); the device's key DER is its UTID's preimage, so the kid check is cheap
            verify_microproof_signature(smp, self._key(device), key_der=device.public_key)
        except BrokenLink as err:
            raise ApiError(401, "bad_signature", str(err)) from err
        self._check_leaves(smp, upload.leaves)  # (7), pure
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
        return row, smp, device

    def _device(self, utid: str, conn: Connection | None = None) -> DeviceRow:
        return self._admit(self.store.device(utid, conn), utid)

    def _admit(self, device: DeviceRow | None, utid: str) -> DeviceRow:
        """The device when policy lets it upload, else the refusal."""
        if device is None:
            raise ApiError(403, "unknown_device", f"{utid} is not enrolled with this hub")
        if device.revoked:
            raise ApiError(403, "revoked_device", f"{utid} was revoked")
        if device.key_kind == "software" and not self.allow_software_keys:
            raise ApiError(
                403, "software_key_refused", f"{utid} signs with a software key; policy needs a TPM"
            )
        return device

    def _key(self, device: DeviceRow) -> PublicKey:
        key = self._keys.get(device.utid)
        if key is None:
            loaded = serialization.load_der_public_key(device.public_key)
            if not isinstance(loaded, PublicKey):
                raise ApiError(403, "unknown_device", f"{device.utid} has an unusable key")
            key = self._keys[device.utid] = loaded
        return key

    def _check_chain(self, smp: SignedMicroProof, device: DeviceRow) -> None:
        mp = smp.proof
        expected = device.head_window + 1
        if mp.window < expected:
            raise ApiError(
                409,
                "fork",
                f"window {mp.window} was already accepted with different bytes",
                expected_window=expected,
            )
        if mp.window > expected:
            raise ApiError(
                409,
                "out_of_order",
                f"window {mp.window} arrived before window {expected}",
                expected_window=expected,
            )
        want_prev = GENESIS_PREV if device.head_hash is None else device.head_hash
        if mp.prev != want_prev:
            raise ApiError(
                409,
                "fork",
                f"prev {mp.prev.hex()} is not the hash of window {device.head_window}"
                f" ({want_prev.hex()})",
                expected_window=expected,
            )

    def _check_seqs(self, smp: SignedMicroProof, device: DeviceRow) -> None:
        mp = smp.proof
        if not mp.count:
            return
        covered = device.head_last_seq + 1
        for gap in sorted(mp.gaps, key=lambda g: g.first):
            if gap.first <= covered <= gap.last + 1:
                covered = max(covered, gap.last + 1)
        if mp.first_seq != covered:
            raise ApiError(
                422,
                "seq_gap",
                f"window {mp.window} starts at seq {mp.first_seq}, expected {covered};"
                " a hole needs a signed gap record",
            )

    def _check_leaves(self, smp: SignedMicroProof, leaves: bytes) -> None:
        mp = smp.proof
        if mp.count > self.limits.max_leaves_per_proof:
            raise ApiError(
                413,
                "too_large",
                f"window {mp.window} signs {mp.count} readings,"
                f" limit {self.limits.max_leaves_per_proof}",
            )
        try:
            got = sequence_root(leaves, mp.count, mp.first_seq)
        except MalformedInput as err:
            code = "leaf_count" if err.field == "leaves" else "bad_leaf"
            raise ApiError(422, code, str(err)) from err
        if got != mp.root:
            raise ApiError(
                422,
                "root_mismatch",
                f"the leaves hash to {got.hex()}, the proof signs {mp.root.hex()}",
            )


def _drop(conn: Connection) -> None:
    if not conn.closed:
        conn.invalidate()


class _Reads:
    """A request's read connection, opened only when a device lookup misses the cache or a
    duplicate check needs the database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
