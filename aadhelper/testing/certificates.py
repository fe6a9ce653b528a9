"""Client certificates for tests, the benchmark and the demo: RSA keys with self-signed or CA-issued certificates,
valid for a chosen window, as PEM or PFX (cryptography; nothing here is for production use).

    cert = make_client_certificate(days=365)
    authority.add_client_certificate("app", cert.certificate_pem)
    store_certificate("profile", cert.pem(), None)     # key + chain; cert.pfx(b"pw") for a PFX
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey


@dataclass(frozen=True)
class CertificateMaterial:
    """A key and its certificate chain (leaf first)."""

    key: RSAPrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate_pem(self) -> bytes:
        """The leaf certificate alone: what is uploaded to the app registration."""
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.chain[0].public_bytes(Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        from cryptography.hazmat.primitives.serialization import (
            BestAvailableEncryption,
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        encryption = BestAvailableEncryption(password) if password else NoEncryption()
        return self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)

    def pem(self, password: bytes | None = None, *, key_last: bool = False) -> bytes:
        """The key and the whole chain in one PEM file (the key first, or last)."""
        from cryptography.hazmat.primitives.serialization import Encoding

        certs = b"".join(cert.public_bytes(Encoding.PEM) for cert in self.chain)
        return certs + self.key_pem(password) if key_last else self.key_pem(password) + certs

    def pfx(self, password: bytes | None = None) -> bytes:
        from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, NoEncryption, pkcs12

        encryption = BestAvailableEncryption(password) if password else NoEncryption()
        return pkcs12.serialize_key_and_certificates(b"aadhelper test", self.key, self.chain[0],
                                                     list(self.chain[1:]) or None, encryption)


def make_client_certificate(*, days: float = 365, not_before: float | None = None, issued_by_ca: bool = False,
                            common_name: str = "aadhelper test app", key_size: int = 2048) -> CertificateMaterial:
    """A fresh RSA key and certificate valid from ``not_before`` (default: an hour ago) for ``days`` days after now;
    with ``issued_by_ca`` the leaf is signed by a new CA, which follows it in the chain."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = time.time()
    start = datetime.datetime.fromtimestamp(now - 3600 if not_before is None else not_before, datetime.UTC)
    end = datetime.datetime.fromtimestamp(now + days * 86400, datetime.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_key, issuer, chain_rest = key, subject, []
    if issued_by_ca:
        issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aadhelper test CA")])
        ca = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
              .public_key(issuer_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(issuer_key, hashes.SHA256()))
        chain_rest.append(ca)
    leaf = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .sign(issuer_key, hashes.SHA256()))
    return CertificateMaterial(key, (leaf, *chain_rest))
