"""Mutual TLS for every listener: client certificates required and checked against
the configured CA; TLS 1.2 at least (1.3 offered); ECDHE with AES-GCM or ChaCha20
only; client keys of at least RSA 2048 or EC 256 bits. A client is known by its
certificate's common name, which names its identity. Every refusal is logged.
ALPN is ignored (no protocol is selected; the handshake goes on).
"""

from pathlib import Path

from OpenSSL import SSL, crypto
from zope.interface import implementer
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger

from gateway.errors import ConfigError

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MIN_RSA_BITS, MIN_EC_BITS = 2048, 256
log = Logger(namespace="gatewayd.tls")


def server_options(ca: Path, cert: Path, key: Path) -> ssl.CertificateOptions:
    """TLS options for a listener; raise ConfigError naming the file that cannot be used."""
    try:
        authority = ssl.Certificate.loadPEM(ca.read_bytes())
        server = ssl.PrivateCertificate.loadPEM(cert.read_bytes() + key.read_bytes())
    except (OSError, ValueError, Exception) as exc:   # pyOpenSSL raises its own Error types
        raise ConfigError(f"TLS material unusable ({type(exc).__name__}): check {ca}, {cert}, {key}",
                          code="E-CONFIG-TLS") from None
    options = ssl.CertificateOptions(
        privateKey=server.privateKey.original, certificate=server.original, verify=True,
        caCerts=[authority.original], requireCertificate=True,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS))
    # CertificateOptions keeps this one context; add our own checks to its verification.
    context = options.getContext()
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
    # Twisted's ALPN callback answers an empty name when it has no protocol in common
    # with the client, which OpenSSL turns into an internal_error alert: ignore ALPN
    # instead (HTTPS speaks HTTP/1.1, MLLP has no ALPN name).
    context.set_alpn_select_callback(lambda connection, offered: SSL.NO_OVERLAPPING_PROTOCOLS)
    return options


def _verify(connection, certificate, error: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict, and no weak client key; every refusal is logged."""
    name = printable(dict(certificate.get_subject().get_components()).get(b"CN", b"?").decode(
        "utf-8", "replace"))
    if not ok:
        log.warn("TLS client {peer} refused: certificate {name!r} failed verification "
                 "({why}, OpenSSL error {error})", peer=_peer(connection), name=name,
                 why=_VERIFY_ERRORS.get(error, "see OpenSSL's verify errors"), error=error)
        return False
    key = certificate.get_pubkey()
    weak = key.type() == crypto.TYPE_RSA and key.bits() < MIN_RSA_BITS or \
        key.type() != crypto.TYPE_RSA and key.bits() < MIN_EC_BITS
    if depth == 0 and weak:
        log.warn("TLS client {peer} refused: certificate {name!r} has a weak key ({bits} bits)",
                 peer=_peer(connection), name=name, bits=key.bits())
        return False
    return True


_VERIFY_ERRORS = {2: "issuer unknown", 9: "not yet valid", 10: "expired", 18: "self-signed",
                  19: "self-signed CA in chain", 20: "issuer unknown", 21: "issuer unknown"}


def _peer(connection) -> str:
    """The client address of a connection in its handshake."""
    peer = getattr(getattr(connection.get_app_data(), "transport", None), "getPeer", None)
    return getattr(peer(), "host", "?") if peer else "?"


def peer_identity(transport) -> str:
    """The common name of the client certificate, or host:port when there is none."""
    name = certificate_name(transport)
    if name is not None:
        return name
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def certificate_name(transport) -> str | None:
    """The client certificate's common name, control characters escaped (a name with a
    line break cannot forge a log line, and names no identity); None without one."""
    certificate = getattr(transport, "getPeerCertificate", lambda: None)()
    if certificate is None:
        return None
    components = dict(certificate.get_subject().get_components())
    return printable(components.get(b"CN", b"?").decode("utf-8", errors="replace"))


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x00``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


@implementer(IOpenSSLContextFactory)
class Reloadable:
    """A listener's TLS context that can be swapped: connections made after ``replace``
    use the new certificates, open ones keep theirs."""

    def __init__(self, options: ssl.CertificateOptions):
        self.options = options

    def replace(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    def getContext(self):
        return self.options.getContext()
