"""The spool commits a window atomically and a restart continues the chain exactly."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import IllegalTransition, SpoolError
from agent.outbox import OutboxEvent
from agent.recover import HubHead, recover_spool
from agent.sealer import seal
from agent.spool import RESTART_REASON, SCHEMA_VERSION, Spool, plan_recovery, plan_shedding
from agent.window import ClosedWindow
from attestation import chain_hash, parse_microproof, verify_chain
from attestation.microproof import GENESIS_PREV, Gap, RecoveryRecord, ResetRecord
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


def _seal_recovery(spool: Spool, prev: list[bytes]) -> list[bytes]:
    """Seal and commit what a start recovered, then one new window: the agent's order."""
    recovery = spool.recovery(max_readings=1000)
    coses = list(prev)
    for w in recovery.windows:
        st = spool.state()
        sealed = seal(w, index=st.next_window, prev=st.prev_hash, signer=SIGNER, iat=1)
        spool.commit(sealed, now_ns=0)
        coses.append(sealed.cose)
    st = spool.state()
    first = recovery.first_free_seq
    new = ClosedWindow(
        _window(first, 2).readings,
        recovery.gaps,
        recovery=recovery.record if not recovery.windows else None,
    )
    sealed = seal(new, index=st.next_window, prev=st.prev_hash, signer=SIGNER, iat=1)
    spool.commit(sealed, now_ns=0)
    coses.append(sealed.cose)
    verify_chain(coses)  # every hole is covered by a signed gap record
    return coses


def test_a_crash_seals_the_journal_and_states_only_the_seqs_handed_out_after_it(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db")
    p0 = _commit_next(spool, 5)
    spool.journal(_window(5, 5).readings, mark=14)  # 5..9 durable; up to 13 may be handed out
    spool.close()  # no release: this is the crash
    again = Spool(tmp_path / "s.db")
    recovery = again.recovery(max_readings=1000)
    (w,) = recovery.windows
    assert [r.seq for r in w.readings] == list(range(5, 10))
    assert w.recovery == RecoveryRecord(recovered=True, recoveries=1, last_journaled=9)
    assert recovery.gaps == (Gap(10, 13, RESTART_REASON),)  # not a reserved block
    assert recovery.first_free_seq == 14
    coses = _seal_recovery(again, [p0])
    proofs = [parse_microproof(c).proof for c in coses]
    assert proofs[1].recovery == w.recovery
    assert proofs[1].gaps == ()
    assert proofs[2].gaps == recovery.gaps
    again.release()
    again.close()
    clean = Spool(tmp_path / "s.db")
    assert clean.recovered_gaps == ()
    assert clean.recovery_record is None


def test_an_idle_agent_killed_states_no_loss_and_no_recovery(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    _commit_next(spool, 5)
    spool.journal([], mark=5)  # the mark came back to the next seq: nothing handed out
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.recovered_gaps == ()
    assert again.recovery_record is None
    assert again.recovery(1000).windows == ()


def test_a_crash_with_nothing_journaled_puts_the_record_on_the_first_new_window(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db")
    p0 = _commit_next(spool, 5)
    spool.journal([], mark=9)  # seqs handed out, killed before their batch was written
    spool.close()
    again = Spool(tmp_path / "s.db")
    recovery = again.recovery(1000)
    assert recovery.windows == ()
    assert recovery.record == RecoveryRecord(recovered=False, recoveries=1, last_journaled=4)
    coses = _seal_recovery(again, [p0])
    last = parse_microproof(coses[-1]).proof
    assert last.recovery == recovery.record
    assert last.gaps == (Gap(5, 8, RESTART_REASON),)


def test_a_crash_during_the_recovery_is_recovered_again_without_losing_its_gap(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db")
    p0 = _commit_next(spool, 5)
    spool.journal(_window(5, 5).readings, mark=14)
    spool.close()
    again = Spool(tmp_path / "s.db")  # recovery planned (10..13 lost), nothing sealed yet
    again.journal(_window(14, 3).readings, mark=20)  # new readings journaled, then a kill
    again.close()
    third = Spool(tmp_path / "s.db")
    recovery = third.recovery(1000)
    assert [[r.seq for r in w.readings] for w in recovery.windows] == [
        list(range(5, 10)),
        [14, 15, 16],
    ]
    assert recovery.windows[0].recovery == RecoveryRecord(True, 2, 16)
    assert recovery.windows[1].gaps == (Gap(10, 13, RESTART_REASON),)
    assert recovery.gaps == (Gap(17, 19, RESTART_REASON),)
    _seal_recovery(third, [p0])


def test_recovered_readings_are_cut_into_windows_of_at_most_max_readings(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.journal(_window(0, 25).readings, mark=25)
    spool.close()
    windows = Spool(tmp_path / "s.db").recovery(max_readings=10).windows
    assert [len(w.readings) for w in windows] == [10, 10, 5]
    assert [w.recovery is not None for w in windows] == [True, False, False]


def test_a_window_commit_does_not_write_journaled_readings_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    window = _window(0, 6)
    spool.journal(window.readings[:4], mark=10)  # the last two are not journaled yet
    sealed = seal(window, index=0, prev=GENESIS_PREV, signer=SIGNER, iat=1)
    spool.commit(sealed, now_ns=0)
    spool.journal(window.readings[3:], mark=10)  # a late batch: already committed, skipped
    assert spool.counts()["readings"] == 6
    assert [r.seq for r in spool.window_readings(0)[1]] == list(range(6))
    st = spool.state()
    assert (st.next_seq, st.journal_next) == (6, 6)


def test_a_journal_batch_that_would_leave_a_hole_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.journal(_window(0, 3).readings, mark=3)
    with pytest.raises(SpoolError, match="starts at seq 5, the journal ends at 3"):
        spool.journal(_window(5, 2).readings, mark=10)
    assert spool.state().journal_next == 3


@given(
    present=st.sets(st.integers(0, 60), max_size=40),
    carried=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5)), max_size=4),
    mark=st.integers(0, 70),
)
def test_recovery_states_every_seq_below_the_mark_exactly_once(
    present: set[int], carried: list[tuple[int, int]], mark: int
) -> None:
    # carried records never overlap journaled readings or each other (a stop writes them so)
    gaps: list[Gap] = []
    taken = set(present)
    for first, length in sorted(carried):
        span = set(range(first, first + length + 1))
        if not span & taken:
            gaps.append(Gap(first, first + length, "queue overflow"))
            taken |= span
    journaled = sorted(present)
    mark = max([mark, *(s + 1 for s in present)])  # a journal batch never ends past its mark
    out = plan_recovery(0, journaled, gaps, mark)
    stated = [s for g in out for s in range(g.first, g.last + 1)]
    assert len(stated) == len(set(stated))  # no seq stated twice
    assert not set(stated) & present  # a journaled reading is never called lost
    assert set(range(mark)) <= set(stated) | present <= set(range(mark)) | taken
    assert [g.first for g in out] == sorted(g.first for g in out)
    assert set(gaps) <= set(out)  # a carried reason is kept


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
        "proofs_dropped": 0,
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
    spool = Spool(tmp_path / "s.db")
    _commit_next(spool, 5)
    spool.journal(_window(5, 3).readings, mark=20)  # 5..7 journaled, then the disk filled
    lost = Gap(8, 11, "disk full")
    spool.release(12, [lost])
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.recovered_gaps == (lost,)
    recovery = again.recovery(1000)
    assert [r.seq for r in recovery.windows[0].readings] == [5, 6, 7]  # sealed at restart
    assert recovery.gaps == (lost,)
    assert again.first_free_seq == 12
    _seal_recovery(again, [])
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


def test_a_spool_written_before_the_journal_keeps_its_readings_and_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            _LAYOUT_0.replace("'acked', 'refused'", "'sent', 'acked', 'refused'")
            .replace(
                "reserved_seq INTEGER NOT NULL);",
                "reserved_seq INTEGER NOT NULL, carry_gaps TEXT NOT NULL DEFAULT '[]');",
            )
            .replace(
                "seq INTEGER PRIMARY KEY, ts_ns",
                "seq INTEGER PRIMARY KEY, window INTEGER NOT NULL, ts_ns",
            )
            .replace("quality INTEGER NOT NULL);", "quality INTEGER NOT NULL, score REAL);")
        )
        db.execute("PRAGMA user_version = 1")
        db.execute("INSERT INTO state VALUES (1, 2, 1, ?, 10000, '[]')", (b"h" * 32,))
        db.execute("INSERT INTO windows VALUES (0, 0, 1, 2, x'00', 0, 'pending', NULL, 0)")
        db.executemany(
            "INSERT INTO readings VALUES (?, 0, ?, 'p', 1.5, 'bar', 0, NULL)", [(0, 7), (1, 8)]
        )
    spool = Spool(path)
    assert [(r.seq, r.ts_ns) for r in spool.window_readings(0)[1]] == [(0, 7), (1, 8)]
    # the old reserved block is stated as before: the layout had no journal to narrow it
    assert spool.recovered_gaps == (Gap(2, 9999, RESTART_REASON),)
    assert spool.state().journal_next == 10_000


def test_a_spool_from_a_newer_agent_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(
        SpoolError,
        match=f"has layout {SCHEMA_VERSION + 1}, this agent knows up to {SCHEMA_VERSION}",
    ):
        Spool(path)


def test_shedding_takes_synced_readings_oldest_first_and_never_unsynced_ones() -> None:
    plan = plan_shedding(1000, 500, [(0, 300), (1, 300), (2, 300)])
    assert plan.windows == (0, 1)
    assert plan_shedding(100, 500, [(0, 300)]).windows == ()
    short = plan_shedding(10_000, 500, [(0, 300)])
    assert short.windows == (0,)
    assert "unsynced data is kept" in short.reason


def test_a_fresh_spool_continues_a_chain_head_and_signs_the_reset_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    assert spool.is_fresh()
    head_hash = bytes(range(32))
    spool.continue_chain(7, 419, head_hash, "spool_lost")
    st = spool.state()
    assert (st.next_window, st.next_seq, st.prev_hash, st.reserved_seq) == (8, 420, head_hash, 420)
    assert spool.pending_reset() == ResetRecord("spool_lost", 7, 419)
    assert not spool.is_fresh()
    with pytest.raises(SpoolError, match="already holds a chain"):
        spool.continue_chain(9, 500, head_hash, "spool_lost")
    spool.close()
    again = Spool(tmp_path / "spool.db")  # durable across a restart
    assert again.pending_reset() == ResetRecord("spool_lost", 7, 419)
    assert again.recovery(50).first_free_seq == 420
    again.close()


def test_recover_moves_a_corrupt_spool_aside_and_continues_the_head(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"not a database " * 100)
    head = HubHead(3, 99, bytes(range(32)), None)
    done = recover_spool(path, head, dt.datetime(2026, 12, 5, 8, 40, tzinfo=dt.UTC))
    aside = tmp_path / "spool.db.forked-20261205T084000Z"
    assert f"moved the old spool to {aside}" in done
    assert aside.read_bytes() == b"not a database " * 100  # kept for an operator
    spool = Spool(path)
    assert (spool.state().next_window, spool.state().next_seq) == (4, 100)
    assert spool.pending_reset() == ResetRecord("spool_corrupt", 3, 99)
    spool.close()
    # run again: the new spool continues the head already, nothing changes
    again = recover_spool(path, head, dt.datetime(2026, 12, 5, 8, 41, tzinfo=dt.UTC))
    assert again.startswith("healthy")
    assert sorted(p.name for p in tmp_path.iterdir() if ".forked-" in p.name) == [aside.name]


def test_a_begin_refused_at_once_as_busy_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite can answer BEGIN IMMEDIATE with SQLITE_BUSY without waiting (where waiting
    cannot help); the spool tries again instead of stopping the uplink (seen once in CI)."""
    import agent.spool as spool_module

    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (x)")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=0")  # busy at once, as in the case above
    holder.execute("BEGIN IMMEDIATE")
    released: list[float] = []

    def other_writer_ends(s: float) -> None:  # the back-off is where its transaction ends
        released.append(s)
        holder.execute("COMMIT")

    monkeypatch.setattr("agent.spool.time.sleep", other_writer_ends)
    spool_module._begin_immediate(db)
    db.execute("INSERT INTO t VALUES (1)")
    db.execute("COMMIT")
    assert released == [0.05]
    assert holder.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_begin_busy_every_time_fails_naming_sqlites_code(tmp_path: Path) -> None:
    import agent.spool as spool_module

    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=0")
    with pytest.raises(sqlite3.OperationalError, match="locked") as err:
        spool_module._begin_immediate(db)
    assert spool_module._errorname(err.value) == "SQLITE_BUSY"
