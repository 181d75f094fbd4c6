"""Mutual TLS for every listener: client certificates required and checked against
the configured CA; TLS 1.2 at least (1.3 offered); ECDHE with AES-GCM or ChaCha20
only; client keys of at least RSA 2048 or EC 256 bits. A client is known by its
certificate's common name, which names its identity. Every refusal is logged with the
client's address and why. ALPN is ignored (no protocol is selected; the handshake goes on).

``tls.ca`` may hold several CA certificates: the first is the gateway's own; a
client certificate from any other is accepted only when its SHA-256 fingerprint
is pinned to an identity (``cert_sha256``), so a hospital's CA added for one
practice cannot speak for another.
"""

from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto
from zope.interface import implementer
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger

from gateway.errors import ConfigError
from gateway.logs import Throttle, escape

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MIN_RSA_BITS, MIN_EC_BITS = 2048, 256
log = Logger(namespace="gatewayd.tls")


def server_options(ca: Path, cert: Path, key: Path, pinned: frozenset = frozenset(),
                   throttle: Throttle | None = None) -> ssl.CertificateOptions:
    """TLS options for a listener, trusting every CA in ``ca`` (certificates from any but
    the first only when their fingerprint is in ``pinned``); refusals are logged through
    ``throttle`` (a few lines a minute per address); raise ConfigError naming the files
    when they cannot be used."""
    try:
        authorities = [crypto.X509.from_cryptography(c)
                       for c in x509.load_pem_x509_certificates(ca.read_bytes())]
        server = ssl.PrivateCertificate.loadPEM(cert.read_bytes() + key.read_bytes())
    except (OSError, ValueError, Exception) as exc:   # pyOpenSSL raises its own Error types
        raise ConfigError(f"TLS material unusable ({type(exc).__name__}): check {ca}, {cert}, {key}",
                          code="E-CONFIG-TLS") from None
    options = ssl.CertificateOptions(
        privateKey=server.privateKey.original, certificate=server.original, verify=True,
        caCerts=authorities, requireCertificate=True,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS))
    own = _digest(authorities[0])
    # CertificateOptions keeps this one context; add our own checks to its verification.
    context = options.getContext()
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                       lambda connection, certificate, error, depth, ok: _verify(
                           connection, certificate, error, depth, ok, own, pinned,
                           throttle or Throttle(lambda: 0.0, burst=1 << 30)))
    # Twisted's ALPN callback answers an empty name when it has no protocol in common
    # with the client, which OpenSSL turns into an internal_error alert: ignore ALPN
    # instead (HTTPS speaks HTTP/1.1, MLLP has no ALPN name).
    context.set_alpn_select_callback(lambda connection, offered: SSL.NO_OVERLAPPING_PROTOCOLS)
    return options


def _digest(certificate) -> str:
    return certificate.digest("sha256").decode().replace(":", "").lower()


def _verify(connection, certificate, error: int, depth: int, ok: int, own: str,
            pinned: frozenset, throttle: Throttle) -> bool:
    """OpenSSL's verdict, no weak client key, and a certificate from another CA than our
    own only when pinned; every refusal is logged."""
    name = escape(dict(certificate.get_subject().get_components()).get(b"CN", b"?").decode(
        "utf-8", "replace"))
    if not ok:
        peer = _peer(connection)
        throttle.warn(log, peer, "TLS client {peer} refused: certificate {name!r} failed "
                      "verification ({why}, OpenSSL error {error})", peer=peer, name=name,
                      why=_VERIFY_ERRORS.get(error, "see OpenSSL's verify errors"), error=error)
        return False
    if depth > 0:
        if _digest(certificate) == own:
            setattr(connection.get_app_data(), "gateway_own_ca", True)
        return True
    key = certificate.get_pubkey()
    weak = key.type() == crypto.TYPE_RSA and key.bits() < MIN_RSA_BITS or \
        key.type() != crypto.TYPE_RSA and key.bits() < MIN_EC_BITS
    if weak:
        peer = _peer(connection)
        throttle.warn(log, peer, "TLS client {peer} refused: certificate {name!r} has a weak "
                      "key ({bits} bits)", peer=peer, name=name, bits=key.bits())
        return False
    if not getattr(connection.get_app_data(), "gateway_own_ca", False) \
            and _digest(certificate) not in pinned:
        peer = _peer(connection)
        throttle.warn(log, peer, "TLS client {peer} refused: certificate {name!r} is from "
                      "another CA and not pinned to an identity", peer=peer, name=name)
        return False
    return True


_VERIFY_ERRORS = {2: "issuer unknown", 9: "not yet valid", 10: "expired", 18: "self-signed",
                  19: "self-signed CA in chain", 20: "issuer unknown", 21: "issuer unknown",
                  66: "weak key (too small)", 67: "weak CA key (too small)",
                  68: "signed with a weak digest"}


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
    return escape(components.get(b"CN", b"?").decode("utf-8", errors="replace"))


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
