"""The hub's ingest rules as values (cloud_sync/chain.py): no database, no app, no clock.

The rules take a device's head and a proof's bytes and return the new head or a refusal
with a stable code; the races a shell meets (a replica, a retry signed again) are sequences
of these calls on values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.microproof import Gap, ProofLimits, SignedMicroProof, chain_hash
from cloud_sync import chain
from cloud_sync.routes.proofs import REFUSAL_STATUS
from tests.cborvariants import altered_copies
from tests.hubkit import Device, resign

POLICY = chain.Policy(allow_software_keys=True)
GENESIS = chain.Head(window=-1, hash=None, last_seq=-1)


@dataclass(frozen=True)
class Row:
    utid: str
    key_kind: str = "software"
    revoked: bool = False


def _signed(dev: Device, n: int = 3, **kw: object) -> tuple[bytes, bytes, SignedMicroProof]:
    cose, leaves, _ = dev.window(n, **kw)  # type: ignore[arg-type]  # Device.window keywords passed through as **kw
    return cose, b"".join(leaves), chain.parse(cose, POLICY)


def _advance(head: chain.Head, cose: bytes) -> chain.Head:
    return chain.advance(head, chain.parse(cose, POLICY), hashlib.sha256(cose).digest())


def test_every_refusal_has_one_http_status() -> None:
    codes = {c.code for c in _subclasses(chain.Refusal)}
    assert codes == set(REFUSAL_STATUS)
    assert all(400 <= s < 500 for s in REFUSAL_STATUS.values())


def _subclasses(cls: type) -> list[type[chain.Refusal]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_a_chain_advances_window_by_window() -> None:
    dev = Device()
    head = GENESIS
    for i in range(3):
        cose, leaves, smp = _signed(dev)
        chain.check_leaves(smp, leaves, POLICY)
        head = _advance(head, cose)
        assert head == chain.Head(i, hashlib.sha256(cose).digest(), 3 * i + 2)


def test_a_window_ahead_of_the_head_is_out_of_order_and_names_the_expected_one() -> None:
    dev = Device()
    _signed(dev)
    cose, _, _ = _signed(dev)
    with pytest.raises(chain.OutOfOrder) as err:
        _advance(GENESIS, cose)
    assert err.value.extra == {"expected_window": 0}


def test_a_prev_that_is_not_the_heads_hash_is_a_fork() -> None:
    dev = Device()
    w0, _, _ = _signed(dev)
    head = _advance(GENESIS, w0)
    dev.prev = bytes(32)
    w1, _, _ = _signed(dev)
    with pytest.raises(chain.Fork, match="prev"):
        _advance(head, w1)


def test_a_hole_in_the_seqs_needs_a_gap_record() -> None:
    dev = Device()
    head = _advance(GENESIS, _signed(dev)[0])
    holed = Device(signer=dev.signer, next_seq=dev.next_seq, next_window=1, prev=dev.prev)
    with pytest.raises(chain.SeqGap, match="expected 3"):
        _advance(head, _signed(holed, skip=2)[0])
    covered, _, _ = _signed(dev, skip=2, gaps=(Gap(3, 4, "crash"),))
    assert _advance(head, covered).last_seq == 7


def test_a_replica_with_a_stale_head_decides_again_on_the_fresh_one() -> None:
    """Two hub processes take the same window of a device. A commits first; B's write finds
    the head moved (its compare-and-set fails), so B decides again on the head A left: the
    same bytes, or the same payload signed again, are that window (a duplicate); another
    payload for it is a fork. Nothing here needs a database: it is a sequence of values."""
    dev = Device()
    w0 = _signed(dev)[0]
    head = _advance(GENESIS, w0)
    stale = head
    w1, _, p1 = _signed(dev)
    resigned = chain.parse(resign(w1, dev.signer), POLICY)
    fork_dev = Device(signer=dev.signer, next_seq=3, next_window=1, prev=chain_hash(w0), t_ns=5)
    forked = chain.parse(_signed(fork_dev)[0], POLICY)

    moved = _advance(stale, w1)  # replica A commits window 1
    assert _advance(stale, w1) == moved  # B computed the same head on its stale read
    # B's write failed; on the fresh head window 1 is behind: the rule says fork ...
    for candidate in (p1, resigned, forked):
        with pytest.raises(chain.Fork):
            chain.advance(moved, candidate, hashlib.sha256(candidate.cose_bytes).digest())
    # ... and the stored proof decides between duplicate and fork
    assert chain.same_window(p1, w1)
    assert chain.same_window(resigned, w1)
    assert not chain.same_window(forked, w1)


@pytest.mark.parametrize("name", sorted(altered_copies(Device().window(2)[0])))
def test_an_altered_copy_is_refused_before_any_other_rule(name: str) -> None:
    cose = Device().window(2)[0]
    with pytest.raises(chain.Noncanonical):
        chain.parse(altered_copies(cose)[name], POLICY)


def test_admission_names_why_a_device_may_not_upload() -> None:
    utid = "utid:" + "0" * 64
    with pytest.raises(chain.UnknownDevice):
        chain.admit(None, utid, None, POLICY)
    with pytest.raises(chain.RevokedDevice):
        chain.admit(Row(utid, revoked=True), utid, None, POLICY)
    strict = chain.Policy(allow_software_keys=False)
    with pytest.raises(chain.SoftwareKeyRefused):
        chain.admit(Row(utid), utid, None, strict)
    with pytest.raises(chain.TokenRequired):
        chain.admit(Row(utid, key_kind="tpm"), utid, None, POLICY)
    with pytest.raises(chain.WrongDevice):
        chain.admit(Row(utid, key_kind="tpm"), utid, "utid:" + "1" * 64, POLICY)
    assert chain.admit(Row(utid, key_kind="tpm"), utid, utid, POLICY).utid == utid


def test_a_signature_under_another_key_and_leaves_that_do_not_match_are_refused() -> None:
    dev, other = Device(), Device()
    _, leaves, smp = _signed(dev)
    der = other.signer.public_key_der()
    key = serialization.load_der_public_key(der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    with pytest.raises(chain.BadSignature):
        chain.check_signature(smp, key, der)
    with pytest.raises(chain.RootMismatch):
        chain.check_leaves(smp, leaves[:-1] + bytes([leaves[-1] ^ 1]), POLICY)
    with pytest.raises(chain.TooLarge):
        chain.check_leaves(smp, leaves, chain.Policy(True, ProofLimits(max_leaves=2)))
