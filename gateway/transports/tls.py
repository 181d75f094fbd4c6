"""Mutual TLS for every listener: client certificates required and checked against
the configured CA; TLS 1.2 at least (1.3 offered); ECDHE with AES-GCM or ChaCha20
only. A client is known by its certificate's common name, which names its identity.
"""

from pathlib import Path

from twisted.internet import ssl

from gateway.errors import ConfigError

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_options(ca: Path, cert: Path, key: Path) -> ssl.CertificateOptions:
    """TLS options for a listener; raise ConfigError naming the file that cannot be used."""
    try:
        authority = ssl.Certificate.loadPEM(ca.read_bytes())
        server = ssl.PrivateCertificate.loadPEM(cert.read_bytes() + key.read_bytes())
    except (OSError, ValueError, Exception) as exc:   # pyOpenSSL raises its own Error types
        raise ConfigError(f"TLS material unusable ({type(exc).__name__}): check {ca}, {cert}, {key}",
                          code="E-CONFIG-TLS") from None
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original, certificate=server.original, verify=True,
        caCerts=[authority.original], requireCertificate=True,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS))


def peer_identity(transport) -> str:
    """The common name of the client certificate, or host:port when there is none."""
    certificate = getattr(transport, "getPeerCertificate", lambda: None)()
    if certificate is not None:
        for key, value in certificate.get_subject().get_components():
            if key == b"CN":
                return value.decode("utf-8", errors="replace")
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


class Reloadable:
    """A listener's TLS context that can be swapped: connections made after ``replace``
    use the new certificates, open ones keep theirs."""

    def __init__(self, options: ssl.CertificateOptions):
        self.options = options

    def replace(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    def getContext(self):
        return self.options.getContext()
