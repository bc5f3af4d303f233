"""The local environment's certificate authority: TLS to the servers, as in the cloud.

The cloud's primary serves TLS with a certificate its stack's CA signed (pulumi_tls,
infra/components/primary_tls.py); locally `infra.local` makes the same three things once, under
`<state>/tls/`, and keeps them:

    ca.crt / ca.key           the local CA (ECDSA P-256, 10 years)
    server.crt / server.key   PostgreSQL (both clusters) and pgBackRest's TLS server:
                              SAN IP 127.0.0.1 and DNS localhost, so `sslmode=verify-full` holds
    client.crt / client.key   the backup workers' client certificate for pgBackRest's server
                              (CN = configs.PGBACKREST_CLIENT_CN)

Keys are created 0600 and owned by the database OS user where the servers read them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from infra import configs
from infra.local.procs import chown_db

VALID_DAYS_CA = 3650
VALID_DAYS_LEAF = 825


class LocalCa:
    def __init__(self, root: Path):
        self.root = root

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def server(self) -> configs.TlsFiles:
        return configs.TlsFiles(cert=str(self.root / "server.crt"),
                                key=str(self.root / "server.key"), ca=str(self.ca))

    def client(self) -> configs.TlsFiles:
        return configs.TlsFiles(cert=str(self.root / "client.crt"),
                                key=str(self.root / "client.key"), ca=str(self.ca))

    def ensure(self) -> None:
        """Make what is missing (a fresh CA re-issues both leaves)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        ca_key_path = self.root / "ca.key"
        fresh = not (self.ca.exists() and ca_key_path.exists())
        if fresh:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                                 "tickstack local CA")])
            cert = (_builder(name, name, key.public_key(), VALID_DAYS_CA)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(_usage(cert_sign=True), critical=True)
                    .sign(key, _sha256()))
            _write(ca_key_path, _key_pem(key), 0o600)
            _write(self.ca, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        server, client = self.server(), self.client()
        if fresh or not Path(server.cert).exists():
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                               x509.DNSName("localhost")])
            self._leaf(ca_cert, ca_key, "localhost", server, san, server_auth=True)
        if fresh or not Path(client.cert).exists():
            self._leaf(ca_cert, ca_key, configs.PGBACKREST_CLIENT_CN, client, None,
                       server_auth=False)

    @staticmethod
    def _leaf(ca_cert, ca_key, cn: str, files: configs.TlsFiles, san,
              *, server_auth: bool) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        b = (_builder(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]),
                      ca_cert.subject, key.public_key(), VALID_DAYS_LEAF)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(_usage(cert_sign=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH if server_auth
                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if san is not None:
            b = b.add_extension(san, critical=False)
        cert = b.sign(ca_key, _sha256())
        # The servers and pgBackRest run as the database OS user: it owns the keys (0600).
        _write(Path(files.key), _key_pem(key), 0o600, db_owned=True)
        _write(Path(files.cert), cert.public_bytes(serialization.Encoding.PEM), 0o644,
               db_owned=True)


def _builder(subject, issuer, public_key, days: int):
    from cryptography import x509

    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)))


def _usage(*, cert_sign: bool):
    from cryptography import x509

    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=not cert_sign, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int, *, db_owned: bool = False) -> None:
    import os

    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if db_owned:
        chown_db(tmp, mode)
    os.replace(tmp, path)
