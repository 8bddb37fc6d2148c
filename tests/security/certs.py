"""A certificate authority made in the test (``cryptography``): CA, server and client
certificates as PEM files, including the broken ones (another CA, an expired certificate).

Keys are unencrypted PKCS#8 (what Kafka's PEM keystore and PostgreSQL's ``ssl_key_file``
read); ``bundle`` files hold a key and its certificate together (Kafka's keystore).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "Authority"]

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """One certificate's files: ``cert`` (PEM), ``key`` (PKCS#8 PEM), ``bundle`` (key + cert)."""

    cert: Path
    key: Path
    bundle: Path


class Authority:
    """A CA whose certificate is ``self.cert``; :meth:`issue` signs leaf certificates with it."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(self._key, hashes.SHA256()))
        self._cert = cert
        self.cert = folder / f"{name}-ca.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, ips: tuple[str, ...] = ("127.0.0.1",), dns: tuple[str, ...] = (),
              expired: bool = False) -> Issued:
        """A leaf certificate for ``name`` valid for these addresses (server and client use);
        ``expired``: its validity ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(d) for d in dns]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self._cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        out = Issued(self.folder / f"{name}.pem", self.folder / f"{name}.key", self.folder / f"{name}.bundle.pem")
        out.cert.write_bytes(cert_pem)
        out.key.write_bytes(key_pem)
        out.bundle.write_bytes(key_pem + cert_pem)
        for path in (out.key, out.bundle):
            path.chmod(0o600)
        return out
