"""Mutual TLS for every listener: client certificates required and checked against
the configured CA; TLS 1.2 at least (1.3 offered); ECDHE with AES-GCM or ChaCha20
only; client keys of at least RSA 2048 or EC 256 bits. A client is known by its
certificate's common name, which names its identity.

``tls.ca`` may hold several CA certificates: the first is the gateway's own; a
client certificate from any other is accepted only when its SHA-256 fingerprint
is pinned to an identity (``cert_sha256``), so a hospital's CA added for one
practice cannot speak for another. Every refused handshake or certificate is one
WARNING line with the peer's address and why (``watch`` wraps a listener's
factory for that).
"""

from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto
from zope.interface import alsoProvides, implementer
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory, IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from gateway.errors import ConfigError

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MIN_RSA_BITS, MIN_EC_BITS = 2048, 256
log = Logger(namespace="gatewayd.tls")


# X.509 verification errors an operator meets (OpenSSL's numbers), as data.
VERIFY_ERRORS = {9: "not valid yet", 10: "expired", 18: "self-signed",
                 19: "self-signed certificate in the chain", 20: "issued by an unknown CA",
                 21: "issued by an unknown CA", 7: "bad signature", 26: "not for client use",
                 66: "has a weak key (too small)", 67: "has a weak CA key (too small)",
                 68: "signed with a weak digest"}


def server_options(ca: Path, cert: Path, key: Path,
                   pinned: frozenset = frozenset()) -> ssl.CertificateOptions:
    """TLS options for a listener, trusting every CA in ``ca`` (certificates from any but
    the first only when their fingerprint is in ``pinned``); raise ConfigError naming
    the files when they cannot be used."""
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
    options.getContext().set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        lambda connection, certificate, error, depth, ok: _verify(
            connection, certificate, error, depth, ok, own, pinned))
    return options


def _digest(certificate) -> str:
    return certificate.digest("sha256").decode().replace(":", "").lower()


def _verify(connection, certificate, error: int, depth: int, ok: int, own: str,
            pinned: frozenset) -> bool:
    """OpenSSL's verdict, no weak client key, and a certificate from another CA than our
    own only when pinned; why a certificate is refused is noted for the refusal line."""
    name = dict(certificate.get_subject().get_components()).get(b"CN", b"?").decode(
        "utf-8", "replace")
    seen = connection.get_app_data()
    if not ok:
        return _refuse(seen, f"certificate {name!r} {VERIFY_ERRORS.get(error, 'failed')} "
                             f"(X.509 error {error})")
    if depth > 0:
        if _digest(certificate) == own:
            setattr(seen, "gateway_own_ca", True)
        return True
    key = certificate.get_pubkey()
    weak = key.type() == crypto.TYPE_RSA and key.bits() < MIN_RSA_BITS or \
        key.type() != crypto.TYPE_RSA and key.bits() < MIN_EC_BITS
    if weak:
        return _refuse(seen, f"certificate {name!r} has a weak key ({key.bits()} bits)")
    if not getattr(seen, "gateway_own_ca", False) and _digest(certificate) not in pinned:
        return _refuse(seen, f"certificate {name!r} is from another CA and not pinned to an "
                             "identity")
    return True


def _refuse(seen, why: str) -> bool:
    if seen is not None:
        setattr(seen, "gateway_refusal", why)
    return False


class _Watched(ProtocolWrapper):
    def connectionLost(self, reason):
        if reason.check(SSL.Error):
            peer = self.transport.getPeer()
            why = getattr(self.transport, "gateway_refusal", None) or _ssl_reason(reason.value)
            log.warn("TLS refused {peer} on {channel}: {why}", peer=f"{peer.host}:{peer.port}",
                     channel=self.factory.channel, why=why)
        super().connectionLost(reason)


def _ssl_reason(error) -> str:
    reasons = [part[-1] for part in (error.args[0] if error.args else []) if isinstance(part, tuple)]
    return "; ".join(reasons) or "handshake failed"


class watch(WrappingFactory):
    """Wrap a TLS listener's factory so that every refused handshake or certificate is
    one WARNING line: peer address, channel, why."""

    protocol = _Watched
    noisy = False

    def __init__(self, factory, channel: str):
        super().__init__(factory)
        self.channel = channel
        if IProtocolNegotiationFactory.providedBy(factory):    # HTTP's ALPN offer stays
            alsoProvides(self, IProtocolNegotiationFactory)

    def acceptableProtocols(self):
        return self.wrappedFactory.acceptableProtocols()


def peer_identity(transport) -> str:
    """The common name of the client certificate, or host:port when there is none."""
    certificate = getattr(transport, "getPeerCertificate", lambda: None)()
    if certificate is not None:
        for key, value in certificate.get_subject().get_components():
            if key == b"CN":
                return value.decode("utf-8", errors="replace")
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


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
