"""HL7 over MLLP: framing only. Decisions sit behind the Handler seam.

A frame is ``0x0B`` message ``0x1C 0x0D``. The protocol buffers bytes until a
frame is complete, so several messages in one read and one message split over
many reads give the same result; bytes outside a frame are discarded. A frame
that grows past ``max_frame`` bytes closes the connection at once (memory stays
bounded); so does a connection idle for ``idle_timeout`` seconds. Messages are
handled one at a time, in order: the next frame waits until the previous one's
ACK is written, so ACKs leave in the order their messages arrived.
"""

from typing import Callable, Protocol as Interface

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from gateway.errors import GatewayError

START, END = b"\x0b", b"\x1c\x0d"

log = Logger(namespace="gatewayd.mllp")   # module level: as a class attribute Twisted renames it


class Handler(Interface):
    """Turns one framed message into its ACK bytes (AA only after a durable store)."""

    def handle(self, message: bytes, peer: str) -> defer.Deferred: ...


def _address(transport) -> str:
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


class MLLPProtocol(protocol.Protocol, TimeoutMixin):

    def __init__(self, handler: Handler, max_frame: int, idle_timeout: float,
                 identify: Callable = _address):
        self.handler, self.max_frame, self.idle_timeout = handler, max_frame, idle_timeout
        self.identify = identify
        self.buffer = bytearray()
        self.in_frame, self.scanned = False, 0
        self.pending: list[bytes] = []
        self.busy = False
        self.peer = ""

    def connectionMade(self):
        self.peer = _address(self.transport)
        self.setTimeout(self.idle_timeout)     # also bounds a TLS handshake that never ends

    def dataReceived(self, data: bytes):
        self.resetTimeout()
        self.buffer += data
        while self.buffer:
            if not self.in_frame:
                start = self.buffer.find(START)
                if start < 0:
                    del self.buffer[:]         # nothing framed: garbage between frames
                    return
                del self.buffer[:start + 1]
                self.in_frame, self.scanned = True, 0
            end = self.buffer.find(END, max(self.scanned - 1, 0))
            if end < 0:
                self.scanned = len(self.buffer)
                if len(self.buffer) > self.max_frame:
                    self._refuse(f"frame larger than {self.max_frame} bytes")
                return
            frame = bytes(self.buffer[:end])
            del self.buffer[:end + 2]
            self.in_frame = False
            if len(frame) > self.max_frame:
                self._refuse(f"frame larger than {self.max_frame} bytes")
                return
            self.pending.append(frame)
            self._next()

    def _next(self) -> None:
        if self.busy or not self.pending:
            return
        self.busy = True
        self.peer = self.identify(self.transport)   # after the handshake: the certificate's name
        frame = self.pending.pop(0)
        result = defer.maybeDeferred(self.handler.handle, frame, self.peer)
        result.addCallbacks(self._reply, self._failed)

    def _reply(self, ack: bytes) -> None:
        self.busy = False
        if self.transport is not None and self.transport.connected:
            self.transport.write(START + ack + END)
        self._next()

    def _failed(self, failure) -> None:
        self.busy = False
        if failure.check(GatewayError):        # e.g. a retired key: one line, no traceback
            log.error("MLLP message from {peer} not stored ({error}); closing without ACK",
                           peer=self.peer, error=str(failure.value))
        else:
            log.failure("MLLP handler failed for {peer}; closing without ACK", failure,
                             peer=self.peer)
        self.pending.clear()
        self.transport.loseConnection()

    def _refuse(self, reason: str) -> None:
        log.warn("MLLP connection from {peer} closed: {reason}", peer=self.peer, reason=reason)
        del self.buffer[:]
        self.pending.clear()
        self.transport.abortConnection()

    def timeoutConnection(self):
        log.info("MLLP connection from {peer} idle too long; closed", peer=self.peer)
        self.transport.abortConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        self.setTimeout(None)


class MLLPFactory(protocol.Factory):
    noisy = False

    def __init__(self, handler: Handler, max_frame: int, idle_timeout: float,
                 identify: Callable = _address):
        self.handler, self.max_frame, self.idle_timeout = handler, max_frame, idle_timeout
        self.identify = identify

    def buildProtocol(self, addr):
        built = MLLPProtocol(self.handler, self.max_frame, self.idle_timeout, self.identify)
        built.factory = self
        return built
