"""Pushing HL7 to an institution over MLLP with mutual TLS (a Deliverer).

One connection per message: send the frame, wait for one ACK frame. The push
counts only when MSA-1 is AA and MSA-2 equals the message's MSH-10; AE, AR, a
wrong MSA-2, a closed connection or no answer within the timeout is a
DeliveryError, and the message goes to the retry queue.
"""

import re

from twisted.internet import defer, protocol, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint

from gateway.codecs import hl7syntax
from gateway.errors import DeliveryError
from gateway.transports.mllp import END, START

_DELIVERY = re.compile(r"mllp://([A-Za-z0-9.-]+):(\d{1,5})")


class _OneShot(protocol.Protocol):
    def __init__(self, frame: bytes, done: defer.Deferred):
        self.frame, self.done, self.buffer = frame, done, b""

    def connectionMade(self):
        self.transport.write(START + self.frame + END)

    def dataReceived(self, data: bytes):
        self.buffer += data
        end = self.buffer.find(END)
        if end >= 0 and not self.done.called:
            start = self.buffer.find(START)
            self.done.callback(self.buffer[start + 1:end] if 0 <= start < end else b"")
            self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        if not self.done.called:
            self.done.errback(DeliveryError("connection closed before an ACK",
                                            code="E-DELIVERY-NO-ACK"))


class MLLPDeliverer:
    """Connects with the gateway's own certificate and checks the institution's server
    certificate against ``authority`` and the host name in the delivery address."""

    def __init__(self, reactor, authority: ssl.Certificate, certificate: ssl.PrivateCertificate,
                 timeout: float):
        self.reactor, self.authority, self.certificate = reactor, authority, certificate
        self.timeout = timeout

    def deliver(self, row, payload: bytes) -> defer.Deferred:
        found = _DELIVERY.fullmatch(row["delivery"])
        if not found or row["format"] not in ("hl7", "zd-hl7"):
            return defer.fail(DeliveryError(f"cannot push {row['format']} to {row['delivery']}",
                                            code="E-DELIVERY-CONFIG"))
        control_id = _control_id(payload)
        done = defer.Deferred()
        options = ssl.optionsForClientTLS(found[1], trustRoot=self.authority,
                                          clientCertificate=self.certificate)
        endpoint = SSL4ClientEndpoint(self.reactor, found[1], int(found[2]), options,
                                      timeout=self.timeout)
        factory = protocol.Factory.forProtocol(lambda: _OneShot(payload, done))
        factory.noisy = False
        connecting = endpoint.connect(factory)
        connecting.addErrback(lambda failure: done.called or done.errback(DeliveryError(
            f"cannot connect: {failure.getErrorMessage()}"[:200], code="E-DELIVERY-CONNECT")))
        done.addTimeout(self.timeout, self.reactor)
        done.addCallback(_check_ack, control_id)
        return done


def _control_id(payload: bytes) -> str:
    (message,) = hl7syntax.split_messages(payload)[:1]
    msh = message.first("MSH")
    return msh[10] if len(msh) > 10 else ""


def _check_ack(ack: bytes, control_id: str) -> None:
    lines = ack.replace(b"\n", b"\r").split(b"\r")
    msa = next((line.split(b"|") for line in lines if line.startswith(b"MSA|")), None)
    if msa is None:
        raise DeliveryError("answer without MSA", code="E-DELIVERY-ACK")
    code, acked = msa[1].decode("latin-1"), (msa[2].decode("latin-1") if len(msa) > 2 else "")
    if acked != control_id:
        raise DeliveryError(f"ACK for {acked[:20]!r}, not for {control_id[:20]!r}",
                            code="E-DELIVERY-ACK")
    if code != "AA":
        raise DeliveryError(f"institution answered {code[:2]}", code="E-DELIVERY-REFUSED")
