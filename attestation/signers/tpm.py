"""TPM 2.0 signer on tpm2-pytss (ESAPI): the device key never leaves the TPM.

ECC P-256 signing key in the owner hierarchy at a persistent handle; ES256 over SHA-256 of
the COSE to-be-signed bytes; the TPM clock is read with each signature. Works against
/dev/tpmrm0 on gateways and a SIMULATED TPM (swtpm) in tests and the demo.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HC,
    TPM2_RC,
    TPM2_RH,
    TPM2_ST,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMT_SIG_SCHEME,
    TPMT_TK_HASHCHECK,
)

from attestation.errors import AttestationError
from attestation.signers.base import ALG_ES256, TpmClock

__all__ = [
    "AK_HANDLE",
    "DEFAULT_KEY_HANDLE",
    "TpmError",
    "TpmSigner",
    "explain",
    "load_or_create_key",
    "open_esapi",
    "parse_tcti",
    "persistent_handles",
]

# Owner-hierarchy persistent handles (TCG handle registry: 0x81000000-0x8100FFFF is the
# owner's range; 0x81010000 and up belong to the endorsement hierarchy, where swtpm_setup
# and TPM makers keep the EKs)
DEFAULT_KEY_HANDLE = 0x81000101  # the device signing key (the UTID)
AK_HANDLE = 0x81000102  # the attestation key that certifies it at enrollment
_KEY_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
)


class TpmError(AttestationError):
    """The TPM cannot be reached or refused an operation."""


def parse_tcti(tcti: str) -> tuple[str, str]:
    """``swtpm:host=127.0.0.1,port=2321`` or ``device:/dev/tpmrm0`` -> (name, config)."""
    name, sep, conf = tcti.partition(":")
    if not sep or name not in ("device", "swtpm", "mssim", "tabrmd"):
        raise TpmError(
            f"TCTI {tcti!r} is not 'device:/dev/tpmrm0', 'swtpm:host=H,port=P' or 'tabrmd:'",
            hint="set [device] tcti in agent.toml",
        )
    return name, conf


@dataclass
class TpmSigner:
    """ES256 with a TPM-resident P-256 key; thread-safe (one ESAPI context behind a lock)."""

    _esapi: ESAPI
    _tcti: TCTILdr
    _key: ESYS_TR
    _der: bytes
    handle: int = DEFAULT_KEY_HANDLE
    kind = "tpm"
    alg = ALG_ES256

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def open(cls, tcti: str, *, handle: int = DEFAULT_KEY_HANDLE, create: bool = True) -> TpmSigner:
        """Load the key at ``handle``, creating and persisting it first when ``create``."""
        esapi, ctx = open_esapi(tcti)
        try:
            key = load_or_create_key(esapi, handle, create=create)
            public, _, _ = esapi.read_public(key)
            der = public.publicArea.to_der()
        except TpmError:
            esapi.close()
            raise
        except TSS2_Exception as err:
            esapi.close()
            raise explain(err, f"load the device key at {handle:#x}") from err
        return cls(esapi, ctx, key, der, handle)

    def public_key_der(self) -> bytes:
        return self._der

    def sign(self, to_be_signed: bytes) -> bytes:
        digest = hashlib.sha256(to_be_signed).digest()
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        # a null ticket: the key is unrestricted, so the TPM need not have hashed the data
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        with self._lock:
            try:
                sig = self._esapi.sign(self._key, digest, scheme, ticket)
            except TSS2_Exception as err:
                raise TpmError(f"TPM2_Sign failed: {err}") from err
        r = bytes(sig.signature.ecdsa.signatureR).rjust(32, b"\0")
        s = bytes(sig.signature.ecdsa.signatureS).rjust(32, b"\0")
        return r + s

    def clock(self) -> TpmClock | None:
        with self._lock:
            try:
                info = self._esapi.read_clock().clockInfo
            except TSS2_Exception as err:
                raise TpmError(f"TPM2_ReadClock failed: {err}") from err
        return TpmClock(
            int(info.clock), int(info.resetCount), int(info.restartCount), bool(info.safe)
        )

    def close(self) -> None:
        with self._lock:
            self._esapi.close()
            self._tcti.close()


def explain(err: TSS2_Exception, what: str) -> TpmError:
    """A TPM response code as a one-line reason and the fix a technician can apply."""
    code = int(err.error) if err.error else int(err.rc)
    if code in (TPM2_RC.BAD_AUTH, TPM2_RC.AUTH_FAIL):
        hint = "the owner hierarchy has an authorization value: pass it with --owner-auth"
        return TpmError(f"TPM could not {what}: wrong owner authorization", hint=hint)
    if code == TPM2_RC.NV_SPACE:
        return TpmError(
            f"TPM could not {what}: its persistent storage (NV) is full",
            hint="list keys with `tpm2_getcap handles-persistent` and free unused ones"
            " with `tpm2_evictcontrol -C o -c HANDLE`",
        )
    if code == TPM2_RC.LOCKOUT:
        return TpmError(
            f"TPM could not {what}: it is in dictionary-attack lockout",
            hint="wait for the lockout to expire or reset it with the lockout auth",
        )
    return TpmError(f"TPM could not {what}: {err}", hint="run `factoryops provision diagnose`")


def open_esapi(tcti: str, *, owner_auth: str | None = None) -> tuple[ESAPI, TCTILdr]:
    """An ESAPI context on ``tcti``, or a TpmError that says how to get one."""
    name, conf = parse_tcti(tcti)
    try:
        ctx = TCTILdr(name, conf)
        esapi = ESAPI(ctx)
    except TSS2_Exception as err:
        raise TpmError(
            f"no TPM answers at {tcti}: {err}",
            hint="check the TPM (ls -l /dev/tpmrm0) or start swtpm; for development set "
            'signer = "software"',
        ) from err
    if owner_auth:
        esapi.tr_set_auth(ESYS_TR.OWNER, owner_auth.encode())
    return esapi, ctx


def persistent_handles(esapi: ESAPI) -> set[int]:
    _, data = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HC.PERSISTENT_FIRST, 64)
    return {int(h) for h in data.data.handles}


def load_or_create_key(
    esapi: ESAPI, handle: int, *, create: bool, template: TPM2B_PUBLIC | None = None
) -> ESYS_TR:
    """The key at persistent ``handle``; made as an owner primary from ``template`` if absent.

    The default template is the device signing key: unrestricted ECC P-256, ECDSA-SHA256.
    """
    # ask first: Esys_TR_FromTPMPublic on a missing handle logs an error to stderr
    if handle in persistent_handles(esapi):
        return esapi.tr_from_tpmpublic(handle)
    if not create:
        raise TpmError(
            f"no key at persistent handle {handle:#x}",
            hint="create it with `factoryops provision init`",
        )
    public = template or TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=_KEY_ATTRS)
    try:
        transient, *_ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), public, ESYS_TR.OWNER)
    except TSS2_Exception as err:
        raise explain(err, f"create the key for {handle:#x}") from err
    try:
        return esapi.evict_control(ESYS_TR.OWNER, transient, handle)
    except TSS2_Exception as err:
        raise explain(err, f"persist the key at {handle:#x}") from err
    finally:
        # no resource manager under swtpm: every transient object is ours to flush
        esapi.flush_context(transient)
