"""A throwaway PKI for TLS tests: a CA, a server certificate for localhost, a client
certificate, written as PEM files (made with ``cryptography``; never used outside tests)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(folder: Path, server_names: tuple[str, ...] = ("localhost",)) -> Pki:
    """CA, a server certificate naming ``server_names`` (DNS names) and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def issue(
        cn: str, key: ec.EllipticCurvePrivateKey, *, ca: bool, usage: x509.ObjectIdentifier | None
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name("factoryops test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        if usage is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            if "127.0.0.1" in server_names:
                sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    ca_cert = issue("factoryops test CA", ca_key, ca=True, usage=None)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca, _ = _write(folder, "ca", ca_cert, None)
    server = _write(
        folder,
        "server",
        issue("broker", server_key, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH),
        server_key,
    )
    client = _write(
        folder,
        "client",
        issue("gw-1", client_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        client_key,
    )
    return Pki(ca, *server, *client)
