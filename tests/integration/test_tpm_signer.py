"""The TPM signer against a real swtpm process (a SIMULATED TPM 2.0)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from agent.sealer import seal
from agent.window import ClosedWindow
from attestation import TrustAnchors, build_receipt, parse_microproof, report_receipt
from attestation.microproof import GENESIS_PREV
from attestation.reading import Reading
from provisioning.swtpm import SwtpmProcess
from tests.cborvariants import high_s

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

    from attestation.signers.base import TpmClock
    from attestation.signers.tpm import TpmSigner

pytestmark = pytest.mark.tpm


@contextmanager
def _signer_on_own_tpm(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[tuple[SwtpmProcess, TpmSigner]]:
    """A swtpm of the test's own (to stop and start) and a signer on it; both end after."""
    from attestation.signers.tpm import TpmSigner

    own = SwtpmProcess(tmp_path_factory.mktemp(name)).start()
    signer = TpmSigner.open(own.tcti)
    try:
        yield own, signer
    finally:
        signer.close()
        own.stop()


def _assert_reset(before: TpmClock | None, after: TpmClock | None) -> None:
    assert before is not None
    assert after is not None
    assert after.reset_count > before.reset_count


def test_the_key_is_created_once_and_persists_across_opens(swtpm: SwtpmProcess) -> None:
    from attestation.signers.tpm import TpmSigner

    first = TpmSigner.open(swtpm.tcti)
    der = first.public_key_der()
    first.close()
    again = TpmSigner.open(swtpm.tcti, create=False)
    assert again.public_key_der() == der
    again.close()


def test_a_tpm_signature_verifies_with_cryptography_and_in_a_receipt(
    swtpm: SwtpmProcess,
) -> None:
    from attestation.signers.tpm import TpmSigner

    signer = TpmSigner.open(swtpm.tcti)
    try:
        sig = signer.sign(b"to be signed")
        pub = serialization.load_der_public_key(signer.public_key_der())
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        der_sig = utils.encode_dss_signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        )
        pub.verify(
            der_sig,
            hashlib.sha256(b"to be signed").digest(),
            ec.ECDSA(utils.Prehashed(hashes.SHA256())),
        )
        rs = tuple(Reading(i, 100 + i, "Pressure", 2.0 + i, "bar") for i in range(5))
        sealed = seal(ClosedWindow(rs), index=0, prev=GENESIS_PREV, signer=signer, iat=1)
        clock = parse_microproof(sealed.cose).proof.tpm_clock
        assert clock is not None
        assert clock.clock > 0
        verdict = report_receipt(
            build_receipt(list(rs), 3, sealed.cose), TrustAnchors(device_keys=(pub,))
        )
        assert verdict.valid, verdict.error
    finally:
        signer.close()


def test_the_tpm_signer_writes_low_s(swtpm: SwtpmProcess) -> None:
    """The TPM's ECDSA s is high half the time; a micro-proof has one canonical form
    (ARCHITECTURE.md), so the signer writes n - s then. 32 in a row low: chance 2^-32."""
    from attestation.signers.tpm import TpmSigner

    signer = TpmSigner.open(swtpm.tcti)
    try:
        sigs = [signer.sign(b"to be signed %d" % i) for i in range(32)]
    finally:
        signer.close()
    assert not any(high_s(s) for s in sigs)


def test_a_tpm_restart_shows_in_the_clock_of_later_proofs(
    tmp_path_factory: pytest.TempPathFactory, swtpm: SwtpmProcess
) -> None:
    from attestation.signers.tpm import TpmSigner

    own = SwtpmProcess(tmp_path_factory.mktemp("restart")).start()
    try:
        before = TpmSigner.open(own.tcti)
        c1 = before.clock()
        before.close()
        own.restart()
        after = TpmSigner.open(own.tcti, create=False)  # the persistent key survived
        c2 = after.clock()
        after.close()
        assert c1 is not None
        assert c2 is not None
        assert (c2.reset_count, c2.restart_count) != (c1.reset_count, c1.restart_count)
    finally:
        own.stop()


def test_one_signer_rides_out_a_tpm_that_goes_away_and_comes_back_reset(
    tmp_path_factory: pytest.TempPathFactory, swtpm: SwtpmProcess
) -> None:
    """While the TPM is off a call says "unavailable" (the agent keeps its window and tries
    again); once it is back the same signer signs again, and the clock shows the reset."""
    from attestation.signers.base import SignerUnavailable

    with _signer_on_own_tpm(tmp_path_factory, "away") as (own, signer):
        c1 = signer.clock()
        own.stop()
        for _ in range(2):  # the first call finds the connection dead, the next no TPM
            with pytest.raises(SignerUnavailable, match=r"TPM2_Sign|no TPM answers"):
                signer.sign(b"while it is off")
        own.start()  # same port and state: a TPM Reset
        raw = signer.sign(b"after")
        c2 = signer.clock()
        key = serialization.load_der_public_key(signer.public_key_der())
        assert isinstance(key, ec.EllipticCurvePublicKey)
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        key.verify(utils.encode_dss_signature(r, s), b"after", ec.ECDSA(hashes.SHA256()))
        _assert_reset(c1, c2)


def test_a_tpm_that_goes_away_again_right_after_a_reopen_leaves_no_stuck_context(
    tmp_path_factory: pytest.TempPathFactory, swtpm: SwtpmProcess
) -> None:
    """A call finds the TPM gone; it comes back, the signer opens it again, and it goes away
    once more as the command is sent. ESAPI is then left mid-command: reused, every later
    call was refused as out of sequence (a ``TpmError``, not "unavailable"), and the agent
    stopped (seen in a run of the gateway_faults rig). The context is dropped instead, so
    once the TPM is back the next call opens it afresh and reads the reset."""
    from attestation.signers.base import SignerUnavailable

    calls = 0
    with _signer_on_own_tpm(tmp_path_factory, "again") as (own, signer):

        def read_clock_while_the_tpm_flaps(esapi: ESAPI) -> object:
            nonlocal calls
            calls += 1
            if calls == 1:  # the TPM is off; it is back for the reopen that follows
                try:
                    return esapi.read_clock()
                finally:
                    own.start()
            own.stop()  # gone again as the retried command goes out
            return esapi.read_clock()

        c1 = signer.clock()
        own.stop()
        # the path clock() takes, with the TPM's power steps put between its two attempts
        with pytest.raises(SignerUnavailable, match="tcti"):
            signer._call("TPM2_ReadClock", read_clock_while_the_tpm_flaps)
        assert calls == 2
        own.start()
        _assert_reset(c1, signer.clock())


def test_no_tpm_gives_a_clear_error_with_a_fix(swtpm: SwtpmProcess) -> None:
    from attestation.signers.tpm import TpmError, TpmSigner

    with pytest.raises(TpmError) as err:
        TpmSigner.open("swtpm:host=127.0.0.1,port=1")
    assert "no TPM answers" in str(err.value)
    assert "software" in err.value.hint
    with pytest.raises(TpmError, match="TCTI"):
        TpmSigner.open("/dev/tpm0")
