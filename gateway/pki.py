"""A development certificate authority, for ``gatewayctl init`` and the tests.

Makes a CA, a server certificate for 127.0.0.1/localhost and client
certificates whose common name is the identity's name (how gatewayd maps a
client certificate to an identity). Keys are EC P-256 unless asked otherwise
and are written with 0600 permissions. Not for production: a hospital's own PKI
issues real certificates.
"""

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = dt.timedelta(days=1)


class Authority:
    """A CA certificate and key kept in memory, able to issue certificates."""

    def __init__(self, name: str = "gatewayd development CA", days: int = 3650):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        subject = _name(name)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - DAY).not_valid_after(now + days * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> "Authority":
        """The CA in ``cert_path`` with its private key ``key_path``; raise ValueError or
        OSError when either cannot be read."""
        authority = cls.__new__(cls)
        authority.cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        authority.key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
        return authority

    def sign(self, csr: x509.CertificateSigningRequest, common_name: str):
        """A client certificate for ``common_name`` on the key of ``csr`` (whose own subject
        is not used); raise ValueError when the request's signature is not valid."""
        if not csr.is_signature_valid:
            raise ValueError("the request's signature does not match its key")
        return self.issue(common_name, public_key=csr.public_key())[0]

    def issue(self, common_name: str, server: bool = False, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None, key=None, public_key=None):
        """A certificate for ``common_name`` signed by this CA; returns (cert, key) — key
        None when only ``public_key`` was given."""
        if public_key is None:
            key = key or ec.generate_private_key(ec.SECP256R1())
            public_key = key.public_key()
        now = dt.datetime.now(dt.timezone.utc)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]   # the gateway also pushes as a client
        builder = (x509.CertificateBuilder().subject_name(_name(common_name))
                   .issuer_name(self.cert.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - DAY).not_valid_after(not_after or now + 825 * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def weak_rsa_key():
    """A 1024-bit RSA key, for tests that a weak client key is refused."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def write(folder: Path, stem: str, cert, key) -> tuple[Path, Path]:
    """Write ``stem.pem`` (certificate) and ``stem.key`` (0600) into ``folder``; without a
    ``key`` only the certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return cert_path, key_path
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def write_ssh_key(path: Path) -> tuple[Path, Path]:
    """A new Ed25519 SSH key: ``path`` (private, OpenSSH format, 0600) and ``path.pub``."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return path, public


def fingerprint(cert) -> str:
    """The certificate's SHA-256 fingerprint, hex (what identities pin)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def subject(cert) -> str:
    """The certificate's subject as one line (RFC 4514)."""
    return cert.subject.rfc4514_string()


def client_cert_path(settings, name: str) -> Path:
    """Where an identity's client certificate is kept: ``clients/NAME.pem`` beside the CA."""
    return settings.tls_ca.parent / "clients" / f"{name}.pem"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gatewayd"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
