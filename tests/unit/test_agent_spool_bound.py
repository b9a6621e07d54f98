"""The spool's bound (ADR 0048): ``counts`` read from a table kept by triggers gives what a full
scan of the windows gives, and shedding drops acknowledged micro-proofs once their readings
are not enough, never an unacknowledged one or the newest acknowledged one."""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.errors import SpoolError, WindowsGone
from agent.outbox import OutboxEvent
from agent.recover import HubHead, recover_spool
from agent.spool import READING_BYTES, SCHEMA_VERSION, ShedPolicy, Spool, plan_shedding
from attestation.microproof import ResetRecord
from tests.unit.test_agent_spool import _commit_next

# what ``counts`` ran on every seal before ADR 0048: the reference the counts table must match
FULL_SCAN = (
    "SELECT COUNT(*), COALESCE(SUM(outbox = 'pending'), 0),"
    " COALESCE(SUM(outbox = 'sent'), 0), COALESCE(SUM(outbox = 'acked'), 0),"
    " COALESCE(SUM(outbox = 'refused'), 0), COALESCE(SUM(count), 0),"
    " COALESCE(SUM(readings_shed), 0) FROM windows"
)
KEYS = ("windows", "pending", "sent", "acked", "refused", "readings", "windows_shed")


def _scanned(db: sqlite3.Connection) -> dict[str, int]:
    return dict(zip(KEYS, db.execute(FULL_SCAN).fetchone(), strict=True))


def _held(db: sqlite3.Connection, state: str | None = None) -> list[int]:
    where = "" if state is None else " WHERE outbox = ?"
    rows = db.execute(f"SELECT window FROM windows{where} ORDER BY window", (state,) * bool(state))
    return [w for (w,) in rows]


# what may happen after a round's commits, sends and acknowledgements
EXTRA = ("none", "fail", "refuse", "restart", "rewind", "shed", "shed")


def _round(spool: Spool, db: sqlite3.Connection, moves: tuple[int, int, int, str, float]) -> Spool:
    """Commit, send, then acknowledge (the hub does so in order) a few windows; then one other
    move of the outbox's lifecycle."""
    commits, sends, acks, extra, frac = moves
    for _ in range(commits):
        _commit_next(spool, 1 + commits)
    spool.mark([i.window for i in spool.pending(sends)], OutboxEvent.SEND)
    spool.mark(_held(db, "sent")[:acks], OutboxEvent.ACK, {"results": []})
    sent = _held(db, "sent")
    if extra == "fail":
        spool.mark(sent, OutboxEvent.FAIL)
    elif extra == "refuse" and sent:
        spool.mark(sent[:1], OutboxEvent.REFUSE, {"error": "fork"})
    elif extra == "restart":  # a real restart: in-flight and refused proofs go back to pending
        spool.release()
        spool.close()
        spool = Spool(spool.path)
    elif extra == "rewind" and (acked := _held(db, "acked")):
        start = acked[-min(1 + acks, len(acked))]
        try:
            spool.rewind(start, {"error": "out_of_order", "expected_window": start})
            event("rewind: done")
        except WindowsGone:  # only when the readings from there on were shed
            event("rewind: refused (readings shed)")
            assert db.execute(
                "SELECT 1 FROM windows WHERE window >= ? AND readings_shed = 1", (start,)
            ).fetchone()
    elif extra == "shed":
        _shed_keeps_the_unacknowledged_and_the_newest(spool, db, frac)
    return spool


def _shed_keeps_the_unacknowledged_and_the_newest(
    spool: Spool, db: sqlite3.Connection, frac: float
) -> None:
    others = [w for w in _held(db) if w not in set(_held(db, "acked"))]
    newest = _held(db, "acked")[-1:]
    plan = spool.shed(int(spool.used_bytes() * frac))
    event("shed: proofs dropped" if plan.proofs else "shed: no proof dropped")
    held = _held(db)
    assert set(others) | set(newest) <= set(held)  # never pending/sent/refused, nor the newest
    assert not set(plan.proofs) & set(held)
    if held:  # what is left is one run up to the chain's head
        assert held == list(range(held[0], spool.state().next_window))
        assert spool.oldest_window() == held[0]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # each example writes a real SQLite file and signs its windows
@given(
    rounds=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 4),
            st.integers(0, 4),
            st.sampled_from(EXTRA),
            st.floats(0.0, 1.2),
        ),
        max_size=12,
    )
)
def test_the_counts_table_matches_a_full_scan_through_any_lifecycle(
    rounds: list[tuple[int, int, int, str, float]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "s.db")
        db = sqlite3.connect(spool.path)
        try:
            for moves in rounds:
                spool = _round(spool, db, moves)
                counts = spool.counts()
                assert {k: counts[k] for k in KEYS} == _scanned(db), moves
                # window rows are only ever deleted by shedding
                assert counts["proofs_dropped"] == spool.state().next_window - counts["windows"]
        finally:
            db.close()
            spool.close()


def test_a_layout_2_spool_gets_its_counts_once_at_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    spool = Spool(path)
    for n in (3, 2, 4, 1):
        _commit_next(spool, n)
    spool.mark([0, 1, 2], OutboxEvent.SEND)
    spool.mark([0, 1], OutboxEvent.ACK, {"results": []})
    spool.mark([2], OutboxEvent.REFUSE, {"error": "fork"})
    spool.close()
    with sqlite3.connect(path) as db:  # back to layout 2: no counts table, no triggers
        for trigger in ("insert", "update", "delete"):
            db.execute(f"DROP TRIGGER windows_counted_{trigger}")
        db.execute("DROP TABLE window_counts")
        db.execute("PRAGMA user_version = 2")
        before = _scanned(db)
    again = Spool(path)  # the refused proof goes back to pending at a start
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert {k: again.counts()[k] for k in KEYS} == _scanned(db)
    assert (before["refused"], again.counts()["pending"]) == (1, 2)
    assert again.counts()["readings"] == 10
    again.close()


def test_proofs_go_only_once_the_readings_are_not_enough() -> None:
    acked = [(0, 300), (1, 300), (2, 300)]
    proofs = [(0, 1000), (1, 1000), (2, 1000)]
    assert plan_shedding(1000, 500, acked, proofs=proofs).proofs == ()  # readings suffice
    plan = plan_shedding(2500, 500, acked, proofs=proofs)
    assert (plan.windows, plan.proofs) == ((0, 1, 2), (0, 1))
    assert "micro-proofs of synced windows" in plan.reason
    assert "still over the cap" not in plan.reason
    short = plan_shedding(5000, 500, acked, proofs=proofs)
    assert short.proofs == (0, 1)  # never the newest acknowledged one
    assert "unsynced data is kept" in short.reason
    # window 1 waits for the hub (say it came back pending after a rewind): 1 and 2 stay
    assert plan_shedding(5000, 500, acked, proofs=proofs, first_unacked=1).proofs == (0,)


# a window held: outbox state, readings shed, bytes of its readings, bytes of its row
_window = st.tuples(
    st.sampled_from(["acked", "acked", "pending", "sent", "refused"]),
    st.booleans(),
    st.integers(0, 600),
    st.integers(0, 600),
)


@given(
    used=st.integers(0, 8000),
    cap=st.integers(0, 8000),
    held=st.lists(_window, max_size=10),
    low_water=st.floats(0.5, 1.0),
)
def test_a_shedding_plan_takes_the_oldest_first_and_stops_once_under_the_low_water_mark(
    used: int, cap: int, held: list[tuple[str, bool, int, int]], low_water: float
) -> None:
    acked = [
        (w, size) for w, (state, shed, size, _) in enumerate(held) if state == "acked" and not shed
    ]
    proofs = [(w, row) for w, (state, _, _, row) in enumerate(held) if state == "acked"]
    first_unacked = next((w for w, h in enumerate(held) if h[0] != "acked"), None)
    plan = plan_shedding(
        used, cap, acked, ShedPolicy(low_water), proofs=proofs, first_unacked=first_unacked
    )
    if used <= cap:
        assert (plan.windows, plan.proofs) == ((), ())
        return
    # never an unacknowledged window, one after it, or the newest acknowledged one
    newest = max((w for w, _ in proofs), default=None)
    droppable = [
        (w, row)
        for w, row in proofs
        if w != newest and (first_unacked is None or w < first_unacked)
    ]
    assert plan.windows == tuple(w for w, _ in acked[: len(plan.windows)])  # oldest first
    assert plan.proofs == tuple(w for w, _ in droppable[: len(plan.proofs)])
    if plan.proofs:  # a proof goes only once every acknowledged reading is shed
        assert len(plan.windows) == len(acked)
    taken = [size for _, size in acked[: len(plan.windows)] + droppable[: len(plan.proofs)]]
    need = used - int(cap * low_water)
    freed = sum(taken)
    assert ("still over the cap" in plan.reason) == (freed < need)
    if freed < need:  # nothing left to take
        assert len(plan.windows) == len(acked) and len(plan.proofs) == len(droppable)
    elif taken:  # no more than needed: without the last one it was not enough
        assert freed - taken[-1] < need


def test_recover_replaces_a_spool_that_dropped_the_hubs_head(tmp_path: Path) -> None:
    """The accepted loss after a hub restored from before the dropped proofs (ADR 0048): the
    spool cannot show it continues the hub's head, so it is moved aside like a forked one."""
    path = tmp_path / "spool.db"
    spool = Spool(path)
    for _ in range(4):
        _commit_next(spool, 2)
    spool.mark([0, 1, 2], OutboxEvent.SEND)
    spool.mark([0, 1, 2], OutboxEvent.ACK, {"results": []})
    assert spool.shed(0).proofs == (0, 1)
    with pytest.raises(SpoolError, match=r"no window 0 .*dropped under the disk cap"):
        spool.window_readings(0)
    spool.close()
    done = recover_spool(
        path, HubHead(0, 1, bytes(32), None), dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    )
    assert done.startswith("moved the old spool to")
    fresh = Spool(path)
    assert fresh.pending_reset() == ResetRecord("spool_forked", 0, 1)
    fresh.close()


def test_a_rewind_on_a_spool_without_windows_says_so(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    with pytest.raises(WindowsGone, match="holds no window: older windows were dropped"):
        spool.rewind(0, {"error": "out_of_order", "expected_window": 0})
    spool.close()


def test_recover_replaces_a_spool_that_shed_windows_after_the_hubs_head(tmp_path: Path) -> None:
    """The hub came back from a backup older than windows the spool had already shed (their
    readings, not their proofs): the spool holds the hub's head, but what follows it can
    never be uploaded again. `agent recover` said "healthy" and the uplink then stopped on
    windows_gone; now the spool is moved aside and the chain continues from the hub's head
    with a reset record saying why (``spool_shed``)."""
    path = tmp_path / "spool.db"
    spool = Spool(path)
    per_window = 400
    for _ in range(4):
        _commit_next(spool, per_window)
    spool.mark([0, 1, 2], OutboxEvent.SEND)
    spool.mark([0, 1, 2], OutboxEvent.ACK, {"results": []})
    # a cap that sheds the readings of windows 0-2 (2.5 windows' worth needed) and no proof
    readings = per_window * READING_BYTES
    cap = int((spool.used_bytes() - 2.5 * readings) / ShedPolicy().low_water)
    plan = spool.shed(cap)
    assert (plan.windows, plan.proofs) == ((0, 1, 2), ())
    assert spool.first_shed_after(1) == 2
    assert spool.first_shed_after(2) is None
    head_cose, _ = spool.window_readings(1)
    spool.close()
    hub_head = HubHead(1, 2 * per_window - 1, hashlib.sha256(head_cose).digest(), None)
    done = recover_spool(path, hub_head, dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    assert done.startswith("moved the old spool to"), done
    fresh = Spool(path)
    assert fresh.pending_reset() == ResetRecord("spool_shed", 1, 2 * per_window - 1)
    fresh.close()
    # with nothing shed after the hub's head, the same spool is healthy and left alone
    aside = next(tmp_path.glob("spool.db.forked-*"))
    assert recover_spool(
        aside, HubHead(3, 0, _head_hash(aside, 3), None), dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    ).startswith("healthy")


def _head_hash(path: Path, window: int) -> bytes:
    spool = Spool(path)
    try:
        cose, _ = spool.window_readings(window)
    finally:
        spool.close()
    return hashlib.sha256(cose).digest()
