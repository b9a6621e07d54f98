"""TPM 2.0 signer on tpm2-pytss (ESAPI): the device key never leaves the TPM.

ECC P-256 signing key in the owner hierarchy at a persistent handle; ES256 over SHA-256 of
the COSE to-be-signed bytes; the TPM clock is read with each signature. Works against
/dev/tpmrm0 on gateways and a SIMULATED TPM (swtpm) in tests and the demo.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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
from attestation.signers.base import ALG_ES256, SignerUnavailable, TpmClock, es256_raw

__all__ = [
    "AK_HANDLE",
    "DEFAULT_KEY_HANDLE",
    "ROTATION_HANDLE",
    "TpmError",
    "TpmSigner",
    "TpmUnavailable",
    "explain",
    "key_template",
    "load_or_create_key",
    "move_key",
    "open_esapi",
    "parse_tcti",
    "persistent_handles",
]

# Owner-hierarchy persistent handles (TCG handle registry: 0x81000000-0x8100FFFF is the
# owner's range; 0x81010000 and up belong to the endorsement hierarchy, where swtpm_setup
# and TPM makers keep the EKs)
DEFAULT_KEY_HANDLE = 0x81000101  # the device signing key (the UTID)
AK_HANDLE = 0x81000102  # the attestation key that certifies it at enrollment
ROTATION_HANDLE = 0x81000103  # a new device key while a key rotation runs (ADR 0038)
_KEY_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
)


T = TypeVar("T")
_TCTI_LAYER = 10 << 16  # TSS2_TCTI_RC_LAYER: the transport to the TPM failed, not the TPM


class TpmError(AttestationError):
    """The TPM cannot be reached or refused an operation."""


class TpmUnavailable(TpmError, SignerUnavailable):
    """The TPM does not answer now (reset, its device or socket gone): try again later."""


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
    tcti: str = ""  # where it was opened: a lost connection is opened again there
    kind = "tpm"
    alg = ALG_ES256

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._open = True  # False once the context is dropped (a reopen failed, a command cut off)

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
        return cls(esapi, ctx, key, der, handle, tcti)

    def public_key_der(self) -> bytes:
        return self._der

    def sign(self, to_be_signed: bytes) -> bytes:
        digest = hashlib.sha256(to_be_signed).digest()
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        # a null ticket: the key is unrestricted, so the TPM need not have hashed the data
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        sig = self._call("TPM2_Sign", lambda e: e.sign(self._key, digest, scheme, ticket))
        r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
        return es256_raw(r, s)  # the TPM's s is high half the time

    def clock(self) -> TpmClock | None:
        info = self._call("TPM2_ReadClock", lambda e: e.read_clock()).clockInfo
        return TpmClock(
            int(info.clock), int(info.resetCount), int(info.restartCount), bool(info.safe)
        )

    def _call(self, what: str, op: Callable[[ESAPI], T]) -> T:
        """``op`` on the TPM; a transport failure (the TPM was reset, or its socket or device
        went away) opens the TPM again once and retries, raising ``TpmUnavailable`` while it
        does not answer, so the caller can keep its window and try later."""
        with self._lock:
            if self._open:
                try:
                    return op(self._esapi)
                except TSS2_Exception as err:
                    if not self.tcti or int(err.rc) & 0xFF0000 != _TCTI_LAYER:
                        raise TpmError(f"{what} failed: {err}") from err
            self._reopen()
            try:
                return op(self._esapi)
            except TSS2_Exception as err:
                if int(err.rc) & 0xFF0000 != _TCTI_LAYER:
                    raise TpmError(f"{what} failed: {err}") from err
                # a command cut off mid-way leaves ESAPI waiting for its answer: every later
                # call on this context is refused as out of sequence, so the next call opens
                # a new one (a TPM reset that came back and went away again did this)
                self._drop()
                raise TpmUnavailable(f"{what} failed: {err}") from err

    def _drop(self) -> None:
        """Close the context: the next call opens the TPM first."""
        if self._open:
            self._open = False
            with contextlib.suppress(TSS2_Exception):
                self._esapi.close()
            with contextlib.suppress(TSS2_Exception):
                self._tcti.close()

    def _reopen(self) -> None:
        self._drop()
        try:
            self._esapi, self._tcti = open_esapi(self.tcti)
        except TpmError as err:
            raise TpmUnavailable(str(err), hint=err.hint) from err
        try:
            self._key = load_or_create_key(self._esapi, self.handle, create=False)
            public, _, _ = self._esapi.read_public(self._key)
        except TSS2_Exception as err:
            with contextlib.suppress(TSS2_Exception):
                self._esapi.close()
                self._tcti.close()
            raise TpmUnavailable(f"the TPM answered but the key did not load: {err}") from err
        self._open = True
        if public.publicArea.to_der() != self._der:
            raise TpmError(
                f"the key at {self.handle:#x} is not the one this agent signs with",
                hint="the TPM was cleared or swapped: enroll the gateway again",
            )

    def close(self) -> None:
        with self._lock:
            self._drop()


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


def key_template(unique: bytes = b"") -> TPM2B_PUBLIC:
    """The device signing key's template. A primary key is derived from the owner seed and
    its template, so the same template gives the same key again; ``unique`` (32 random bytes,
    a key rotation's) makes another key, which the same ``unique`` re-creates (ADR 0038)."""
    public = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=_KEY_ATTRS)
    if unique:
        public.publicArea.unique.ecc.x = unique
    return public


def move_key(esapi: ESAPI, template: TPM2B_PUBLIC, source: int, target: int) -> None:
    """Make the key of ``template`` (persisted at ``source``) the one at ``target``: the old
    key at ``target`` is evicted (gone for good), the key re-created from its template and
    persisted there, then ``source`` is freed. Each step can be rerun after a cut."""
    handles = persistent_handles(esapi)
    if target in handles:
        old = esapi.tr_from_tpmpublic(target)
        if source not in handles:
            return  # moved already: the source was freed last
        old_public, _, _ = esapi.read_public(old)
        new_public, _, _ = esapi.read_public(esapi.tr_from_tpmpublic(source))
        if old_public.publicArea.to_der() != new_public.publicArea.to_der():
            try:
                esapi.evict_control(ESYS_TR.OWNER, old, target)
            except TSS2_Exception as err:
                raise explain(err, f"evict the old key at {target:#x}") from err
    load_or_create_key(esapi, target, create=True, template=template)
    if source in persistent_handles(esapi):
        try:
            esapi.evict_control(ESYS_TR.OWNER, esapi.tr_from_tpmpublic(source), source)
        except TSS2_Exception as err:
            raise explain(err, f"free the rotation handle {source:#x}") from err


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
    public = template or key_template()
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
