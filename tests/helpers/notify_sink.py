"""A real local SMTP server (ESMTP with STARTTLS) and HTTPS webhook receiver, for tests.

``python -m tests.helpers.notify_sink FOLDER TLS_FOLDER`` listens on free ports on
127.0.0.1, prints ``ready SMTP_PORT HTTPS_PORT`` and writes every message it gets
into FOLDER: ``mail-N-tls.eml`` (or ``-plain`` when it came without STARTTLS) and
``hook-N.json``. The certificate is the gateway's development server certificate.
"""

import itertools
import sys
from pathlib import Path

from twisted.internet import defer, reactor, ssl
from twisted.mail import smtp
from twisted.web import resource, server
from zope.interface import implementer

COUNTER = itertools.count(1)


@implementer(smtp.IMessage)
class Mail:
    def __init__(self, folder: Path, secure: bool):
        self.folder, self.secure, self.lines = folder, secure, []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        name = f"mail-{next(COUNTER)}-{'tls' if self.secure else 'plain'}.eml"
        (self.folder / name).write_bytes(b"\n".join(self.lines) + b"\n")
        return defer.succeed(None)

    def connectionLost(self):
        self.lines = []


@implementer(smtp.IMessageDelivery)
class Delivery:
    def __init__(self, folder: Path):
        self.folder, self.protocol = folder, None

    def receivedHeader(self, helo, origin, recipients):
        return b"Received: by notify_sink"

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        secure = self.protocol.startedTLS
        return lambda: Mail(self.folder, secure)


class SMTPFactory(smtp.SMTPFactory):
    def __init__(self, folder: Path, context):
        super().__init__()
        self.folder, self.context = folder, context

    def buildProtocol(self, addr):
        protocol = smtp.ESMTP(contextFactory=self.context)
        protocol.factory = self
        protocol.delivery = Delivery(self.folder)
        protocol.delivery.protocol = protocol
        return protocol


class Hook(resource.Resource):
    isLeaf = True

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def render_POST(self, request):
        (self.folder / f"hook-{next(COUNTER)}.json").write_bytes(request.content.read())
        return b"{}"


def main(folder: str, tls_folder: str) -> None:
    out, tls = Path(folder), Path(tls_folder)
    context = ssl.DefaultOpenSSLContextFactory(str(tls / "server.key"), str(tls / "server.pem"))
    mail = reactor.listenTCP(0, SMTPFactory(out, context), interface="127.0.0.1")
    hook = reactor.listenSSL(0, server.Site(Hook(out)), context, interface="127.0.0.1")
    print(f"ready {mail.getHost().port} {hook.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:3])
