"""The device side of enrollment: EK, AK, credential activation, Certify and Quote.

TCG / Keylime style (docs/enrollment.md):

1. ``evidence()``: the EK certificate (NV 0x01C00002, RSA 2048, written by the TPM maker, or
   by ``swtpm_setup --create-ek-cert`` for a SIMULATED TPM), the EK public area, the
   attestation key (AK: restricted ECC P-256 signing key) and the device signing key.
2. The hub wraps a secret to the EK, bound to the AK's name (MakeCredential); only the
   TPM that holds that EK *and* that AK can ``activate`` it.
3. ``certify(nonce)``: the AK vouches that the signing key lives in the same TPM, is
   fixedTPM and was generated inside it. ``quote(nonce)``: the AK signs the PCRs.

Every transient object and session is flushed here (there is no resource manager in
front of swtpm). One ``TpmIdentity`` holds one ESAPI connection; close it when done.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from attestation.signers.base import TpmClock
from attestation.signers.tpm import (
    AK_HANDLE,
    DEFAULT_KEY_HANDLE,
    ROTATION_HANDLE,
    TpmError,
    explain,
    key_template,
    load_or_create_key,
    move_key,
    open_esapi,
    persistent_handles,
)

__all__ = [
    "EK_CERT_INDEX",
    "QUOTE_PCRS",
    "Evidence",
    "Quote",
    "TpmIdentity",
    "b64",
    "unb64",
]

EK_CERT_INDEX = 0x01C00002  # TCG EK Credential Profile: RSA 2048 EK certificate
QUOTE_PCRS = "sha256:0,1,2,3,4,5,6,7"  # firmware and boot measurements
_NV_CHUNK = 512  # below every TPM's MAX_NV_BUFFER_SIZE
_AK_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as err:
        raise TpmError(f"{field} is not base64") from err


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the device sends first: who its TPM is and which keys it holds."""

    ek_cert_der: bytes
    ek_public: bytes  # TPM2B_PUBLIC, marshalled
    ak_public: bytes
    key_public: bytes

    def as_json(self) -> dict[str, str]:
        return {
            "ek_cert": b64(self.ek_cert_der),
            "ek_public": b64(self.ek_public),
            "ak_public": b64(self.ak_public),
            "key_public": b64(self.key_public),
        }


@dataclass(frozen=True, slots=True)
class Quote:
    attest: bytes  # TPMS_ATTEST as the TPM marshalled it (what the signature covers)
    signature: bytes  # TPMT_SIGNATURE, marshalled
    pcrs: dict[int, bytes]  # index -> SHA-256 bank value, in selection order

    def as_json(self) -> dict[str, Any]:
        return {
            "attest": b64(self.attest),
            "signature": b64(self.signature),
            "pcrs": {str(i): v.hex() for i, v in self.pcrs.items()},
        }


class TpmIdentity:
    """EK/AK/signing-key operations on one TPM (device or SIMULATED swtpm)."""

    def __init__(
        self, tcti: str, *, key_handle: int = DEFAULT_KEY_HANDLE, owner_auth: str | None = None
    ) -> None:
        self._esapi, self._tcti = open_esapi(tcti, owner_auth=owner_auth)
        self.tcti = tcti
        self.key_handle = key_handle

    def close(self) -> None:
        self._esapi.close()
        self._tcti.close()

    def __enter__(self) -> TpmIdentity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clock(self) -> TpmClock:
        info = self._tpm("read the clock", self._esapi.read_clock).clockInfo
        return TpmClock(
            int(info.clock), int(info.resetCount), int(info.restartCount), bool(info.safe)
        )

    # keys -------------------------------------------------------------------------------
    def persistent(self) -> set[int]:
        """The persistent handles in use."""
        return persistent_handles(self._esapi)

    def has_keys(self) -> dict[str, bool]:
        handles = persistent_handles(self._esapi)
        return {"signing_key": self.key_handle in handles, "ak": AK_HANDLE in handles}

    def ensure_keys(self) -> None:
        """Create and persist the signing key and the AK if absent (idempotent)."""
        load_or_create_key(self._esapi, self.key_handle, create=True)
        self._ak()

    def _ak(self) -> ESYS_TR:
        public = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=_AK_ATTRS)
        return load_or_create_key(self._esapi, AK_HANDLE, create=True, template=public)

    def _public(self, handle: ESYS_TR) -> TPM2B_PUBLIC:
        public, _, _ = self._esapi.read_public(handle)
        return public

    @contextmanager
    def _ek(self) -> Iterator[ESYS_TR]:
        _, template = create_ek_template("EK-RSA2048", self._nv_read)
        ek, *_ = self._tpm(
            "create the EK",
            lambda: self._esapi.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
            ),
        )
        try:
            yield ek
        finally:
            self._esapi.flush_context(ek)

    def ek_certificate(self) -> bytes:
        """The EK certificate (DER) from NV; a TPM without one cannot be enrolled."""
        try:
            return self._nv_read(EK_CERT_INDEX)
        except NoSuchIndex:
            raise TpmError(
                f"this TPM has no EK certificate at NV {EK_CERT_INDEX:#x}",
                hint="a SIMULATED TPM needs `swtpm_setup --create-ek-cert`; a real one"
                " may need its EK certificate fetched from the maker",
            ) from None

    def _nv_read(self, index: int) -> bytes:
        # ask first: Esys_TR_FromTPMPublic on a missing index logs errors to stderr
        _, data = self._esapi.get_capability(TPM2_CAP.HANDLES, index, 1)
        if index not in {int(h) for h in data.data.handles}:
            raise NoSuchIndex(index)
        try:
            nv = self._esapi.tr_from_tpmpublic(index)
        except TSS2_Exception as err:  # the index is not defined
            raise NoSuchIndex(index) from err
        try:
            pub, _ = self._esapi.nv_read_public(nv)
            size = int(pub.nvPublic.dataSize)
            out = bytearray()
            while len(out) < size:
                n = min(_NV_CHUNK, size - len(out))
                out += bytes(self._esapi.nv_read(nv, n, len(out), auth_handle=nv))
            return bytes(out)
        finally:
            self._esapi.tr_close(nv)

    def evidence(self) -> Evidence:
        cert = self.ek_certificate()
        with self._ek() as ek:
            ek_public = self._public(ek).marshal()
        key = load_or_create_key(self._esapi, self.key_handle, create=False)
        return Evidence(
            cert, ek_public, self._public(self._ak()).marshal(), self._public(key).marshal()
        )

    # enrollment steps ---------------------------------------------------------------------
    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential: the secret the hub wrapped to our EK for our AK."""
        blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
        secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        ak = self._ak()
        with self._ek() as ek, self._policy_session() as session:
            # the EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT)
            self._tpm(
                "satisfy the EK policy",
                lambda: self._esapi.policy_secret(ESYS_TR.ENDORSEMENT, session),
            )
            cred = self._tpm(
                "activate the credential (was it made for this TPM's EK and AK?)",
                lambda: self._esapi.activate_credential(
                    ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                ),
            )
        return bytes(cred)

    # key rotation (ADR 0038) ------------------------------------------------------------
    def stage_key(self, unique: bytes, handle: int) -> None:
        """Persist the new signing key of ``unique`` at ``handle`` (kept if it is there)."""
        load_or_create_key(self._esapi, handle, create=True, template=key_template(unique))

    def public_area(self, handle: int) -> bytes:
        """The TPM2B_PUBLIC of the key at ``handle``, marshalled (what the hub names)."""
        key = load_or_create_key(self._esapi, handle, create=False)
        return bytes(self._public(key).marshal())

    def promote_key(self, unique: bytes, source: int | None = None) -> None:
        """The staged key of ``unique`` becomes the device key; the old one is evicted."""
        move_key(self._esapi, key_template(unique), source or ROTATION_HANDLE, self.key_handle)

    def drop_key(self, handle: int) -> None:
        """Evict the key at ``handle``, if there is one."""
        if handle in persistent_handles(self._esapi):
            key = self._esapi.tr_from_tpmpublic(handle)
            self._tpm("evict the staged key", lambda: self._esapi.evict_control(
                ESYS_TR.OWNER, key, handle))  # fmt: skip

    def certify(self, nonce: bytes, handle: int | None = None) -> tuple[bytes, bytes]:
        """TPM2_Certify of the signing key (or the key at ``handle``) by the AK over
        ``nonce``: (attest, signature)."""
        key = load_or_create_key(self._esapi, handle or self.key_handle, create=False)
        ak = self._ak()
        attest, sig = self._tpm(
            "certify the signing key",
            lambda: self._esapi.certify(key, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)),
        )
        return bytes(attest), sig.marshal()

    def quote(self, nonce: bytes, pcrs: str = QUOTE_PCRS) -> Quote:
        ak = self._ak()
        selection = TPML_PCR_SELECTION.parse(pcrs)
        attest, sig = self._tpm("quote the PCRs", lambda: self._esapi.quote(ak, selection, nonce))
        values = self.pcr_values(pcrs)
        return Quote(bytes(attest), sig.marshal(), values)

    def pcr_values(self, pcrs: str = QUOTE_PCRS) -> dict[int, bytes]:
        indices = [int(i) for i in pcrs.split(":", 1)[1].split(",")]
        out: dict[int, bytes] = {}
        # PCR_Read returns at most 8 digests a call; ask one at a time to keep it simple
        for i in indices:
            _, _, digests = self._esapi.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{i}"))
            out[i] = bytes(digests.digests[0])
        return out

    @contextmanager
    def _policy_session(self) -> Iterator[ESYS_TR]:
        session = self._esapi.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            yield session
        finally:
            self._esapi.flush_context(session)

    @staticmethod
    def _tpm(what: str, call: Any) -> Any:
        try:
            return call()
        except TSS2_Exception as err:
            raise explain(err, what) from err
