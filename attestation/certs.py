"""Fleet CA and device certificates (X.509, cryptography).

A device certificate binds a UTID's signing key to the fleet and says how the key
is held: ``tpm`` or ``software`` (subject OU ``factoryops-key:<kind>``), so hub
policy and auditors can refuse development keys.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attestation.errors import BrokenLink, MalformedInput
from attestation.utid import utid_bytes, utid_text

__all__ = [
    "KEY_KIND_PREFIX",
    "DeviceCertificate",
    "issue_device_certificate",
    "make_fleet_ca",
    "verify_device_certificate",
]

KEY_KIND_PREFIX = "factoryops-key:"
KEY_KINDS = ("tpm", "software", "pkcs11")


@dataclass(frozen=True, slots=True)
class DeviceCertificate:
    """What a verified device certificate tells us."""

    utid: bytes
    key_kind: str
    public_key: ec.EllipticCurvePublicKey
    not_after: dt.datetime


def make_fleet_ca(
    key: ec.EllipticCurvePrivateKey, name: str, *, now: dt.datetime, years: int = 20
) -> x509.Certificate:
    """A self-signed fleet CA certificate for ``key``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def issue_device_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    device_spki_der: bytes,
    key_kind: str,
    *,
    now: dt.datetime,
    days: int = 3650,
) -> x509.Certificate:
    """Certify a device signing key; the URI SAN is its UTID, the OU says how the key is held."""
    if key_kind not in KEY_KINDS:
        raise ValueError(f"key kind {key_kind!r} is not one of {KEY_KINDS}")
    public_key = serialization.load_der_public_key(device_spki_der)
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise MalformedInput("public_key", "device keys are EC P-256")
    utid = utid_text(utid_bytes(device_spki_der))
    # CN is capped at 64 characters (RFC 5280 ub-common-name), the UTID text is 69: the
    # full UTID travels as a URI SAN, the CN carries a short form for humans.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, utid[:21]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, KEY_KIND_PREFIX + key_kind),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def verify_device_certificate(
    cert_der: bytes, anchors: list[x509.Certificate], *, now: dt.datetime
) -> DeviceCertificate:
    """Check ``cert_der`` was issued by one of ``anchors`` and is valid at ``now``."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as err:
        raise MalformedInput("certificates[0]", f"not a DER X.509 certificate: {err}") from err
    issuer = next((a for a in anchors if a.subject == cert.issuer), None)
    if issuer is None:
        raise BrokenLink(
            "certificate",
            f"issuer {cert.issuer.rfc4514_string()} is not a trusted fleet CA",
            hint="pin the hub's fleet CA certificate with --trust",
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as err:
        raise BrokenLink("certificate", f"not signed by the fleet CA: {err}") from err
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise BrokenLink(
            "certificate",
            f"valid {cert.not_valid_before_utc:%Y-%m-%d}..{cert.not_valid_after_utc:%Y-%m-%d},"
            f" not at {now:%Y-%m-%d %H:%M}",
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BrokenLink("certificate", "device certificate does not hold an EC key")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    kinds = [
        str(a.value)[len(KEY_KIND_PREFIX) :]
        for a in ous
        if str(a.value).startswith(KEY_KIND_PREFIX)
    ]
    if len(kinds) != 1 or kinds[0] not in KEY_KINDS:
        raise BrokenLink("certificate", "device certificate does not state its key kind")
    return DeviceCertificate(utid_bytes(der), kinds[0], key, cert.not_valid_after_utc)
