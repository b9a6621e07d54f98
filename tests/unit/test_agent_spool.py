"""The spool commits a window atomically and a restart continues the chain exactly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import IllegalTransition, SpoolError
from agent.sealer import seal
from agent.spool import RESTART_REASON, SCHEMA_VERSION, Spool, plan_shedding
from agent.window import ClosedWindow, OutboxEvent
from attestation import chain_hash, parse_microproof, verify_chain
from attestation.microproof import GENESIS_PREV, Gap
from attestation.reading import Reading
from attestation.signers.software import SoftwareSigner

SIGNER = SoftwareSigner.generate()


def _window(first: int, n: int) -> ClosedWindow:
    return ClosedWindow(
        tuple(Reading(first + i, 1000 + first + i, "p", float(i), "bar") for i in range(n))
    )


def _commit_next(spool: Spool, n: int) -> bytes:
    st = spool.state()
    first = max(st.next_seq, spool.first_free_seq)
    window = ClosedWindow(_window(first, n).readings, spool.recovered_gaps)
    sealed = seal(window, index=st.next_window, prev=st.prev_hash, signer=SIGNER, iat=1)
    spool.commit(sealed, now_ns=0)
    spool.recovered_gaps = ()
    return sealed.cose


def test_a_restart_continues_the_chain_and_the_seqs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    p0 = _commit_next(spool, 5)
    spool.release()
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.recovered_gaps == ()
    st = again.state()
    assert (st.next_seq, st.next_window, st.prev_hash) == (5, 1, chain_hash(p0))
    p1 = _commit_next(again, 3)
    verify_chain([p0, p1])


def test_seqs_reserved_but_never_committed_become_a_signed_gap_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", seq_block=100)
    p0 = _commit_next(spool, 5)
    spool.reserve(12)  # seqs handed out to readings that a crash then loses
    spool.close()  # no release: this is the crash
    again = Spool(tmp_path / "s.db", seq_block=100)
    (gap,) = again.recovered_gaps
    assert (gap.first, gap.last) == (5, 111)
    assert again.first_free_seq == 112
    p1 = _commit_next(again, 2)
    assert parse_microproof(p1).proof.gaps == (gap,)
    verify_chain([p0, p1])  # the hole is covered by the signed gap record


def test_a_window_committed_out_of_turn_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    sealed = seal(_window(0, 2), index=3, prev=GENESIS_PREV, signer=SIGNER, iat=1)
    with pytest.raises(SpoolError, match="out of turn"):
        spool.commit(sealed, now_ns=0)
    assert spool.counts()["windows"] == 0
    assert spool.state().next_window == 0


def test_the_outbox_moves_from_pending_to_acked(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    _commit_next(spool, 4)
    _commit_next(spool, 4)
    assert [i.window for i in spool.pending(10)] == [0, 1]
    assert len(spool.pending(10)[0].readings) == 4
    spool.mark([0, 1], OutboxEvent.SEND)
    assert spool.pending(10) == []  # in flight: not handed out twice
    spool.mark([0], OutboxEvent.ACK, {"status": "accepted"})
    spool.mark([1], OutboxEvent.FAIL)
    assert [i.window for i in spool.pending(10)] == [1]
    assert spool.counts() == {
        "windows": 2,
        "pending": 1,
        "sent": 0,
        "acked": 1,
        "refused": 0,
        "readings": 8,
        "windows_shed": 0,
    }
    assert spool.last_answer() == (0, "acked", {"status": "accepted"})


def test_an_illegal_outbox_event_changes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    _commit_next(spool, 2)
    _commit_next(spool, 2)
    spool.mark([0], OutboxEvent.SEND)
    with pytest.raises(IllegalTransition, match="'ack' in state 'pending'"):
        spool.mark([0, 1], OutboxEvent.ACK)  # window 1 was never sent
    assert spool.counts()["sent"] == 1
    assert spool.counts()["acked"] == 0
    with pytest.raises(SpoolError, match="no window 7"):
        spool.mark([7], OutboxEvent.SEND)


def test_proofs_in_flight_or_refused_at_a_stop_are_sent_again_after_a_restart(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db")
    for _ in range(3):
        _commit_next(spool, 2)
    spool.mark([0, 1], OutboxEvent.SEND)
    spool.mark([1], OutboxEvent.REFUSE, {"error": "unknown_device"})
    spool.close()  # window 0 in flight, 1 refused: a crash or a stop
    again = Spool(tmp_path / "s.db")
    assert [i.window for i in again.pending(10)] == [0, 1, 2]


def test_a_hub_that_lost_acknowledged_windows_gets_them_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for _ in range(3):
        _commit_next(spool, 2)
    spool.mark([0, 1, 2], OutboxEvent.SEND)
    spool.mark([0, 1, 2], OutboxEvent.ACK, {"status": "accepted"})
    assert spool.rewind(1, {"error": "out_of_order", "expected_window": 1}) == [1, 2]
    assert [i.window for i in spool.pending(10)] == [1, 2]


def test_a_clean_stop_carries_the_reason_for_seqs_it_could_not_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", seq_block=100)
    _commit_next(spool, 5)
    spool.reserve(20)
    lost = Gap(8, 11, "queue overflow")
    spool.release(12, [lost])  # seqs 5..7 were never explained: a crash-like loss
    spool.close()
    again = Spool(tmp_path / "s.db", seq_block=100)
    assert again.recovered_gaps == (Gap(5, 7, RESTART_REASON), lost)
    assert again.first_free_seq == 12
    _commit_next(again, 1)
    again.release()
    again.close()
    assert Spool(tmp_path / "s.db").recovered_gaps == ()  # paid by the signed proof


# The first spool layout (before the 'sent' outbox state and carried gap records).
_LAYOUT_0 = """
CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), next_seq INTEGER NOT NULL,
    next_window INTEGER NOT NULL, prev_hash BLOB NOT NULL, reserved_seq INTEGER NOT NULL);
CREATE TABLE windows (window INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, count INTEGER NOT NULL, cose BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    outbox TEXT NOT NULL CHECK (outbox IN ('pending', 'acked', 'refused')), ack TEXT,
    readings_shed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX windows_outbox ON windows (outbox, window);
CREATE TABLE readings (seq INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, signal TEXT NOT NULL,
    value REAL NOT NULL, unit TEXT NOT NULL, quality INTEGER NOT NULL);
"""


def test_a_spool_written_by_the_first_layout_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(_LAYOUT_0)
        db.execute("INSERT INTO state VALUES (1, 4, 1, ?, 4)", (b"h" * 32,))
        db.execute("INSERT INTO windows VALUES (0, 0, 3, 4, x'00', 0, 'acked', '{}', 0)")
    spool = Spool(path)
    assert spool.counts()["acked"] == 1
    assert spool.state().next_seq == 4
    spool.mark([0], OutboxEvent.REWIND)  # the new layout's states are allowed
    spool.mark([0], OutboxEvent.SEND)
    assert spool.counts()["sent"] == 1
    spool.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_spool_from_a_newer_agent_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SpoolError, match="has layout 2, this agent knows up to 1"):
        Spool(path)


def test_shedding_takes_synced_readings_oldest_first_and_never_unsynced_ones() -> None:
    plan = plan_shedding(1000, 500, [(0, 300), (1, 300), (2, 300)])
    assert plan.windows == (0, 1)
    assert plan_shedding(100, 500, [(0, 300)]).windows == ()
    short = plan_shedding(10_000, 500, [(0, 300)])
    assert short.windows == (0,)
    assert "unsynced data is kept" in short.reason
