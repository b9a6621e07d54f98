"""The hub's fleet CA: a P-256 key (file, mode 0600) and a self-signed certificate.

It issues the device certificates that receipts carry; auditors pin ``fleet-ca.pem``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.certs import issue_device_certificate, make_fleet_ca
from attestation.signers.software import load_private_key, write_private_key
from cloud_sync.errors import HubError

__all__ = ["FleetCA"]


@dataclass(frozen=True, slots=True)
class FleetCA:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def load_or_create(cls, data_dir: Path, name: str, *, now: dt.datetime) -> FleetCA:
        key_path, cert_path = data_dir / "fleet-ca.key", data_dir / "fleet-ca.pem"
        if key_path.exists():
            loaded = serialization.load_pem_private_key(load_private_key(key_path), None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise HubError(f"{key_path} is not an EC private key")
            if not cert_path.exists():
                raise HubError(
                    f"{cert_path} is missing next to {key_path}",
                    hint="restore it from backup; the fleet CA cannot be re-made",
                )
            return cls(loaded, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_fleet_ca(key, name, now=now)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        tmp = cert_path.with_name(".fleet-ca.pem.tmp")
        tmp.write_bytes(pem)
        tmp.replace(cert_path)
        write_private_key(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return cls(key, cert)

    def issue(self, spki_der: bytes, key_kind: str, *, now: dt.datetime) -> bytes:
        """DER of a new device certificate for ``spki_der``."""
        cert = issue_device_certificate(self.key, self.certificate, spki_der, key_kind, now=now)
        return cert.public_bytes(serialization.Encoding.DER)

    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
