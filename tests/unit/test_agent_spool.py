"""The spool commits a window atomically and a restart continues the chain exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.sealer import seal
from agent.spool import Spool, plan_shedding
from agent.window import ClosedWindow
from attestation import chain_hash, parse_microproof, verify_chain
from attestation.microproof import GENESIS_PREV
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
    gaps = [spool.recovered_gap] if spool.recovered_gap else []
    sealed = seal(
        _window(first, n), index=st.next_window, prev=st.prev_hash, signer=SIGNER, iat=1, gaps=gaps
    )
    spool.commit(sealed, now_ns=0)
    spool.recovered_gap = None
    return sealed.cose


def test_a_restart_continues_the_chain_and_the_seqs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    p0 = _commit_next(spool, 5)
    spool.release()
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.recovered_gap is None
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
    gap = again.recovered_gap
    assert gap is not None
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
    spool.mark([0], "acked", {"status": "accepted"})
    assert [i.window for i in spool.pending(10)] == [1]
    assert spool.counts() == {"windows": 2, "pending": 1, "acked": 1, "readings": 8}


def test_shedding_takes_synced_readings_oldest_first_and_never_unsynced_ones() -> None:
    plan = plan_shedding(1000, 500, [(0, 300), (1, 300), (2, 300)])
    assert plan.windows == (0, 1)
    assert plan_shedding(100, 500, [(0, 300)]).windows == ()
    short = plan_shedding(10_000, 500, [(0, 300)])
    assert short.windows == (0,)
    assert "unsynced data is kept" in short.reason
