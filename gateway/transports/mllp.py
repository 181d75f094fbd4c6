"""HL7 over MLLP: framing only. Decisions sit behind the Handler seam.

A frame is ``0x0B`` message ``0x1C 0x0D``. The protocol buffers bytes until a
frame is complete, so several messages in one read and one message split over
many reads give the same result; bytes outside a frame are discarded. Memory
stays bounded: a frame that grows past ``max_frame`` bytes closes the connection
at once; so does a frame not complete within ``frame_seconds`` of its start
(trickling a byte at a time does not keep it alive), a connection idle for
``idle_timeout`` seconds, and the connection whose bytes push the total held
for all connections (partial frames and frames waiting for their turn) past the
shared ``Budget`` (which counts a frame until its ACK is written). Messages are handled one at a time, in order: the next frame
waits until the previous one's ACK is written, so ACKs leave in the order their
messages arrived; while frames wait, the connection stops reading (TCP holds
what the client sends next).
"""

from typing import Callable, Protocol as Interface

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from gateway.errors import GatewayError
from gateway.transports.guard import Budget

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
                 identify: Callable = _address, frame_seconds: float = 120,
                 budget: Budget | None = None):
        self.handler, self.max_frame, self.idle_timeout = handler, max_frame, idle_timeout
        self.identify, self.frame_seconds = identify, frame_seconds
        self.log = log          # an attribute, so a test can listen
        self.budget = budget or Budget(4 * max_frame)
        self.buffer = bytearray()
        self.in_frame, self.scanned = False, 0
        self.pending: list[bytes] = []
        self.busy = False
        self.reading = True                 # False while frames wait or ACKs back up
        self.blocked = False                # the transport's write buffer is full
        self.answering = 0                  # the size of the frame being answered
        self.frame_call = None
        self.peer = ""
        self.identified = False             # ``peer`` names the certificate (once per connection)

    def connectionMade(self):
        self.peer = _address(self.transport)
        self.setTimeout(self.idle_timeout)     # also bounds a TLS handshake that never ends
        self.transport.registerProducer(self, True)   # told when our ACKs back up

    def dataReceived(self, data: bytes):
        if self.in_frame or START in data:     # bytes outside frames keep nothing alive
            self.resetTimeout()
        self.buffer += data
        try:
            self._frames()
        finally:
            self._count()
        self.budget.relieve()
        self._read_or_wait()

    def _read_or_wait(self) -> None:
        """Read while nothing waits: frames waiting their turn, or ACKs the client does not
        read, stop the reading (TCP holds what the client sends next)."""
        wanted = not self.pending and not self.blocked
        if wanted != self.reading and self.transport is not None and self.transport.connected:
            self.reading = wanted
            (self.transport.resumeProducing if wanted else self.transport.pauseProducing)()

    def pauseProducing(self):
        """The transport's write buffer is full (the client reads no ACKs): stop."""
        self.blocked = True
        self._read_or_wait()

    def resumeProducing(self):
        self.blocked = False
        self._read_or_wait()
        self._next()

    def stopProducing(self):
        self.blocked = True

    def evictable(self) -> int:
        """Bytes that closing this connection would free (not the frame being stored)."""
        return len(self.buffer) + sum(map(len, self.pending))

    def evict(self, reason: str) -> None:
        self._refuse(reason)

    def _frames(self) -> None:
        """Cut complete frames off the buffer into ``pending``; start each frame's clock."""
        while self.buffer:
            if not self.in_frame:
                start = self.buffer.find(START)
                if start < 0:
                    del self.buffer[:]         # nothing framed: garbage between frames
                    return
                del self.buffer[:start + 1]
                self.in_frame, self.scanned = True, 0
                self.frame_call = self.callLater(self.frame_seconds, self._frame_late)
            end = self.buffer.find(END, max(self.scanned - 1, 0))
            if end < 0:
                self.scanned = len(self.buffer)
                if len(self.buffer) > self.max_frame:
                    self._refuse(f"frame larger than {self.max_frame} bytes")
                return
            frame = bytes(self.buffer[:end])
            del self.buffer[:end + 2]
            self.in_frame = False
            self._stop_frame_clock()
            if len(frame) > self.max_frame:
                self._refuse(f"frame larger than {self.max_frame} bytes")
                return
            self.pending.append(frame)
            self._next()

    def _count(self) -> None:
        """Bring this connection's share of the shared budget up to date."""
        self.budget.set(self, self.evictable() + self.answering)

    def _frame_late(self) -> None:
        self.frame_call = None
        self._refuse(f"frame not complete within {self.frame_seconds} s")

    def _stop_frame_clock(self) -> None:
        if self.frame_call is not None and self.frame_call.active():
            self.frame_call.cancel()
        self.frame_call = None

    def _next(self) -> None:
        if self.busy or self.blocked or not self.pending:
            self._read_or_wait()
            return
        self.busy = True
        if not self.identified:             # after the handshake: the certificate's name
            self.peer, self.identified = self.identify(self.transport), True
        frame = self.pending.pop(0)
        self.answering = len(frame)
        result = defer.maybeDeferred(self.handler.handle, frame, self.peer)
        result.addCallbacks(self._reply, self._failed)

    def _reply(self, ack: bytes) -> None:
        self.busy, self.answering = False, 0
        self._count()
        if self.transport is not None and self.transport.connected:
            self.transport.write(START + ack + END)
        self._next()

    def _failed(self, failure) -> None:
        self.busy, self.answering = False, 0
        if failure.check(GatewayError):        # a full disk, a retired key: the daemon logs it
            self.log.debug("MLLP message from {peer} not stored ({error}); closing without ACK",
                           peer=self.peer, error=str(failure.value))
        else:
            self.log.failure("MLLP handler failed for {peer}; closing without ACK", failure,
                             peer=self.peer)
        self.pending.clear()
        self.transport.unregisterProducer()    # TLS waits for its producer before closing
        self.transport.loseConnection()

    def _refuse(self, reason: str) -> None:
        self.log.warn("MLLP connection from {peer} closed: {reason}", peer=self.peer, reason=reason)
        self._drop()
        self.transport.abortConnection()

    def _drop(self) -> None:
        del self.buffer[:]
        self.pending.clear()
        self.answering = 0
        self._count()
        self._stop_frame_clock()

    def timeoutConnection(self):
        if self.busy:                          # waiting for the store, not for the client
            self.setTimeout(self.idle_timeout)
            return
        self.log.info("MLLP connection from {peer} idle too long; closed", peer=self.peer)
        self.transport.abortConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        self.setTimeout(None)
        self._drop()


class MLLPFactory(protocol.Factory):
    """MLLP connections sharing one Budget of held bytes."""

    noisy = False

    def __init__(self, handler: Handler, max_frame: int, idle_timeout: float,
                 identify: Callable = _address, frame_seconds: float = 120,
                 budget: Budget | None = None):
        self.handler, self.max_frame, self.idle_timeout = handler, max_frame, idle_timeout
        self.identify, self.frame_seconds = identify, frame_seconds
        self.budget = budget or Budget(4 * max_frame)

    def buildProtocol(self, addr):
        built = MLLPProtocol(self.handler, self.max_frame, self.idle_timeout, self.identify,
                             self.frame_seconds, self.budget)
        built.factory = self
        return built
