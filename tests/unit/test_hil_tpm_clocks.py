"""hil_tests/system_runner.py: the TPM-fault checks take the TPM clock before and after a
fault from when each proof was signed, so a reading that reaches the spool late (a loaded
machine) or a heal that takes longer than planned cannot leave the check without a side."""

from __future__ import annotations

from attestation import GENESIS_PREV
from attestation.microproof import (
    MicroProof,
    SignedMicroProof,
    parse_microproof,
    sign_microproof,
)
from attestation.signers import SoftwareSigner
from attestation.signers.base import TpmClock
from hil_tests.system_runner import tpm_clocks_around

SIGNER = SoftwareSigner.generate()
WALL0_NS = 1_800_000_000 * 10**9  # the rig's start


def _proof(
    window: int, first_seq: int, last_seq: int, iat_s: int, resets: int | None
) -> SignedMicroProof:
    clock = None if resets is None else TpmClock(1000 * iat_s, resets, 0, True)
    mp = MicroProof(
        window=window,
        first_seq=first_seq,
        last_seq=last_seq,
        first_ts_ns=WALL0_NS,
        last_ts_ns=WALL0_NS,
        count=last_seq - first_seq + 1,
        root=bytes(32),
        prev=GENESIS_PREV,
        tpm_clock=clock,
    )
    return parse_microproof(sign_microproof(mp, SIGNER, iat=WALL0_NS // 10**9 + iat_s))


def test_the_clocks_come_from_when_proofs_were_signed_not_from_the_seqs_they_hold() -> None:
    """A TPM power-cycled from 14.5 s to 17 s. The backlog signed at 18 s holds every seq up
    to 900, and a node's reading stamped during the fault reached the spool late (seq 950,
    in the last window): no window begins after it, yet both sides have a clock. A window
    signed during a clock jump ahead at 5 s carries an iat past the heal: it is no "after"."""
    proofs = [
        _proof(0, 0, 49, 4, 1),
        _proof(1, 50, 60, 125, 1),  # the wall clock 2 minutes ahead
        _proof(2, 61, 99, 12, 1),
        _proof(3, 100, 199, 13, 1),
        _proof(4, 200, 900, 18, 2),  # the backlog, signed once the TPM was back
        _proof(5, 901, 999, 19, 2),  # holds the late reading
    ]
    got = tpm_clocks_around(proofs, WALL0_NS, 14.5, 17.0)
    assert not isinstance(got, str), got
    before, after = got
    assert (before.reset_count, before.clock) == (1, 13_000)
    assert (after.reset_count, after.clock) == (2, 18_000)


def test_a_proof_signed_within_a_second_of_either_edge_is_not_taken() -> None:
    """iat is whole seconds: a proof stamped in the second the fault began may be signed
    after it, one stamped in the second of the heal before it. The heal as recorded (19.2 s,
    later than the planned 17 s) counts, not the plan."""
    proofs = [_proof(0, 0, 9, 14, 1), _proof(1, 10, 19, 19, 2), _proof(2, 20, 29, 20, 2)]
    got = tpm_clocks_around(proofs, WALL0_NS, 14.5, 19.2)
    assert isinstance(got, str)
    assert "signed before the fault" in got
    assert "before 14.5 s: 0, from 20.2 s: 1; 3 proofs signed from 14.0 to 20.0 s" in got
    proofs.insert(0, _proof(9, 0, 0, 13, 1))
    got = tpm_clocks_around(proofs, WALL0_NS, 14.5, 19.2)
    assert not isinstance(got, str), got
    assert (got[0].clock, got[1].clock) == (13_000, 20_000)


def test_a_missing_side_is_named_with_what_was_signed() -> None:
    """The run ended before anything was signed after the heal: the detail says so, with
    the proofs' signing times, so a failed CI run says why without its spool."""
    proofs = [_proof(0, 0, 9, 10, 1), _proof(1, 10, 19, 130, 1), _proof(2, 20, 29, 12, None)]
    got = tpm_clocks_around(proofs, WALL0_NS, 14.5, 17.0)
    assert got == (
        "no TPM clock in the proofs signed after the fault (before 14.5 s: 2, from 18.0 s: 0; "
        "3 proofs signed from 10.0 to 130.0 s)"
    )
