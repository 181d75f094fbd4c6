"""Pushing HL7 to an institution over MLLP with mutual TLS (a Deliverer).

One connection per message: send the frame, wait for one ACK frame. The push
counts only when MSA-1 is AA and MSA-2 equals the message's MSH-10; AE, AR, a
wrong MSA-2, a closed connection or no answer within the timeout is a
DeliveryError, and the message goes to the retry queue. However it ends, the
connection is closed (one whose answer does not come in time is aborted, never left
open), and an answer may be at most 64 kB.
"""

import re

from twisted.internet import defer, protocol, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.protocols.policies import TimeoutMixin

from gateway.codecs import hl7syntax
from gateway.errors import DeliveryError
from gateway.transports.mllp import END, START

_DELIVERY = re.compile(r"mllp://([A-Za-z0-9.-]+):([0-9]{1,5})")


MAX_ACK = 64 * 1024


class _OneShot(protocol.Protocol, TimeoutMixin):
    """Sends one frame, waits ``timeout`` seconds (the TLS handshake included) for one
    ACK frame; ``done`` fires with the ACK or fails, and the connection goes."""

    def __init__(self, frame: bytes, done: defer.Deferred, timeout: float):
        self.frame, self.done, self.buffer, self.timeout = frame, done, b"", timeout

    def connectionMade(self):
        self.setTimeout(self.timeout)
        self.transport.write(START + self.frame + END)

    def dataReceived(self, data: bytes):
        self.buffer += data
        end = self.buffer.find(END)
        if end >= 0:
            start = self.buffer.find(START)
            self._end(self.buffer[start + 1:end] if 0 <= start < end else b"")
        elif len(self.buffer) > MAX_ACK:
            self._end(DeliveryError(f"answer longer than {MAX_ACK} bytes", code="E-DELIVERY-ACK"))

    def timeoutConnection(self):
        self._end(DeliveryError(f"no ACK within {self.timeout:g} s", code="E-DELIVERY-TIMEOUT"))

    def _end(self, outcome) -> None:
        self.setTimeout(None)
        self.transport.abortConnection()
        if not self.done.called:
            (self.done.errback if isinstance(outcome, Exception) else self.done.callback)(outcome)

    def connectionLost(self, reason=protocol.connectionDone):
        self.setTimeout(None)
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
        factory = protocol.Factory.forProtocol(lambda: _OneShot(payload, done, self.timeout))
        factory.noisy = False
        connecting = endpoint.connect(factory)
        connecting.addErrback(lambda failure: done.called or done.errback(DeliveryError(
            f"cannot connect: {failure.getErrorMessage()}"[:200], code="E-DELIVERY-CONNECT")))
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
