"""The hub's tables (SQLAlchemy Core): devices, windows (micro-proofs) and their leaves.

The device row's chain head is advanced with a compare-and-set update, and a window is
stored only on the head before it, so the primary key (utid, window) makes a fork impossible
to store even with two hub processes on one database (ADR 0052).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "anomaly_events",
    "api_keys",
    "audit_log",
    "device_challenges",
    "device_policies",
    "device_tokens",
    "devices",
    "enrollment_tokens",
    "enrollments",
    "grants",
    "job_logs",
    "jobs",
    "log_checkpoints",
    "log_entries",
    "log_nodes",
    "metadata",
    "operators",
    "sessions",
    "source_gaps",
    "statements",
    "webhook_deliveries",
    "window_leaves",
    "windows",
]

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("utid", String(69), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("key_kind", String(16), nullable=False),
    Column("certificate", LargeBinary, nullable=False),
    Column("name", String(128), nullable=False),
    Column("site", String(128), nullable=False, default="default"),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_ns", BigInteger, nullable=False),
    # chain head: the last accepted window (-1 before the first), its COSE hash and last seq
    Column("head_window", BigInteger, nullable=False, default=-1),
    Column("head_hash", LargeBinary, nullable=True),
    Column("head_last_seq", BigInteger, nullable=False, default=-1),
    Column("last_seen_ns", BigInteger, nullable=True),
    Column("n_readings", BigInteger, nullable=False, default=0),
    # key rotation (ADR 0038): the key this device moved to (then it is revoked) and the key
    # it came from (its chain continues that device's head)
    Column("rotated_to", String(69), nullable=True),
    Column("rotated_from", String(69), nullable=True),
)

windows = Table(
    "windows",
    metadata,
    Column("utid", String(69), ForeignKey("devices.utid"), primary_key=True),
    Column("window", BigInteger, primary_key=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("first_ts_ns", BigInteger, nullable=False),
    Column("last_ts_ns", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("prev", LargeBinary, nullable=False),
    Column("cose", LargeBinary, nullable=False),
    Column("cose_sha256", LargeBinary, nullable=False),
    Column("gaps", Integer, nullable=False, default=0),
    Column("received_ns", BigInteger, nullable=False),
    # where the window's leaves are in a SQLite hub's leaves file (ADR 0053); NULL where
    # they are a ``window_leaves`` row (PostgreSQL, windows stored before 0014) or there
    # are none (a window of gap records only)
    Column("leaves_offset", BigInteger, nullable=True),
    Column("leaves_length", Integer, nullable=True),
    Index("ix_windows_utid_last_seq", "utid", "last_seq"),
)
# One unique key, (utid, window). A stored window always chains onto its device's window
# before it (window = head + 1, prev = the head's hash: ``chain.advance``, checked inside the
# transaction that moves the head), so a second proof with the same bytes or the same prev
# has the same (utid, window): the key refuses it, a race between replicas included. The
# unique indexes on ``cose_sha256`` and on (utid, prev) that stood beside it added two
# random-key index pages to every commit for nothing (migration 0013, ADR 0052).

# Each accepted window's leaves, exactly as the device signed and uploaded them: the leaves
# back to back (a CBOR sequence, ADR 0008) whose RFC 9162 root is the micro-proof's signed
# root. One row a window, not one a reading: the hub's ingest cost is per window (ADR 0007).
# A SQLite hub writes them to its leaves file instead (``storage/leaffile.py``, ADR 0053);
# this table keeps PostgreSQL's and those stored before.
# Readings are decoded from here for receipts and charts; editing a stored byte breaks the
# receipts of its window.
window_leaves = Table(
    "window_leaves",
    metadata,
    Column("utid", String(69), primary_key=True),
    Column("window", BigInteger, primary_key=True),
    Column("leaves", LargeBinary, nullable=False),
)

# The transparency log: entry i is the i-th accepted micro-proof (its exact COSE bytes live
# in ``windows``; the log keeps the RFC 9162 leaf hash and where the entry came from).
log_entries = Table(
    "log_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("utid", String(69), nullable=False),
    Column("window", BigInteger, nullable=False),
    Column("entry_hash", LargeBinary, nullable=False),
    UniqueConstraint("utid", "window", name="uq_log_entries_utid_window"),
)

log_checkpoints = Table(
    "log_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
)

# Enrollment (cloud_sync/enroll.py). Secrets are stored as SHA-256 only.
enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("token_sha256", LargeBinary, primary_key=True),
    Column("site", String(128), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
    Column("used_ns", BigInteger, nullable=True),  # set once, by compare-and-set
    Column("used_by", String(69), nullable=True),
)

# one row per started enrollment: what the device claimed and what it must prove
enrollments = Table(
    "enrollments",
    metadata,
    Column("session", String(64), primary_key=True),
    Column("token_sha256", LargeBinary, nullable=False),
    Column("name", String(128), nullable=False),
    Column("ek_sha256", LargeBinary, nullable=False),  # of the EK public key (SPKI DER)
    Column("ak_public", LargeBinary, nullable=False),  # TPM2B_PUBLIC
    Column("key_public", LargeBinary, nullable=False),
    Column("secret_sha256", LargeBinary, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | done
    Column("utid", String(69), nullable=True),
    Column("pcrs", Text, nullable=True),  # JSON {index: hex} of the accepted quote
)

device_challenges = Table(
    "device_challenges",
    metadata,
    Column("challenge_sha256", LargeBinary, primary_key=True),
    Column("utid", String(69), nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

device_tokens = Table(
    "device_tokens",
    metadata,
    Column("token_sha256", LargeBinary, primary_key=True),
    Column("utid", String(69), nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
)

# One row per accepted window whose signed micro-proof reports anomalous rows: the hub's
# anomaly list (the event is the signed proof itself; this is an index of it).
anomaly_events = Table(
    "anomaly_events",
    metadata,
    Column("utid", String(69), primary_key=True),
    Column("window", BigInteger, primary_key=True),
    Column("first_ts_ns", BigInteger, nullable=False),
    Column("last_ts_ns", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("max_score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("model_id", String(128), nullable=True),
    Column("model_sha256", LargeBinary, nullable=True),
    Column("received_ns", BigInteger, nullable=False),
    Index("ix_anomaly_events_received", "received_ns"),
)

# One row per source gap (payload key 16) of an accepted window: which device, connection,
# node or tag was silent, when, and why. An index of the signed proofs, as anomaly_events is.
source_gaps = Table(
    "source_gaps",
    metadata,
    Column("utid", String(69), primary_key=True),
    Column("window", BigInteger, primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),  # its place in key 16
    Column("source", String(512), nullable=False),  # 128 characters of UTF-8
    Column("first_ts_ns", BigInteger, nullable=False),
    Column("last_ts_ns", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("received_ns", BigInteger, nullable=False),
    Index("ix_source_gaps_received", "received_ns"),
)

# Access (cloud_sync/access.py): operators, their roles per site, API keys, sessions, audit.
operators = Table(
    "operators",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("salt", LargeBinary, nullable=False),
    Column("password_scrypt", LargeBinary, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("site", String(128), primary_key=True),
    Column("role", String(16), nullable=False),  # viewer | operator | admin
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("username", String(64), nullable=False),
    Column("secret_sha256", LargeBinary, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("sid_sha256", LargeBinary, primary_key=True),
    Column("username", String(64), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts_ns", BigInteger, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("detail", Text, nullable=False),
    Column("ip", String(64), nullable=False),
)

# Metering (cloud_sync/metering.py): closed months' signed statements, webhook deliveries.
statements = Table(
    "statements",
    metadata,
    Column("site", String(128), primary_key=True),
    Column("month", String(7), primary_key=True),  # YYYY-MM
    Column("note", Text, nullable=False),  # a C2SP signed note
    Column("created_ns", BigInteger, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("next_ns", BigInteger, nullable=False),
    Column("last_error", String(200), nullable=False),
)

# The newest storage (shedding) policy each device signed (attestation/policy.py).
device_policies = Table(
    "device_policies",
    metadata,
    Column("utid", String(69), primary_key=True),
    Column("cose", LargeBinary, nullable=False),
    Column("received_ns", BigInteger, nullable=False),
)

# Hashes of the log's perfect aligned subtrees (2^level entries from index * 2^level), written
# with each append, so proofs need O(log n) lookups, never a read of every entry.
log_nodes = Table(
    "log_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

# Fleet jobs (cloud_sync/jobs/): one row a job, its state, progress and outcome; the queue
# (NATS JetStream or the in-process runner) carries only the job id, the row is the truth.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("params", Text, nullable=False),  # JSON, validated against the type at submission
    Column("site", String(128), nullable=True),  # None: fleet-wide (hub admin only)
    Column("state", String(16), nullable=False),  # cloud_sync/jobs/lifecycle.py
    Column("progress", Float, nullable=False, default=0.0),  # 0..1
    Column("message", String(500), nullable=False, default=""),
    Column("result", Text, nullable=True),  # JSON
    Column("error", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker", String(128), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("submitted_by", String(128), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("started_ns", BigInteger, nullable=True),
    Column("finished_ns", BigInteger, nullable=True),
    Column("heartbeat_ns", BigInteger, nullable=True),
    Index("ix_jobs_state", "state"),
)

job_logs = Table(
    "job_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("line", Text, nullable=False),
    Index("ix_job_logs_job", "job_id", "id"),
)
