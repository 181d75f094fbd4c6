"""The web bounds every gatewayd site lives within (the HTTPS API, the metrics port).

Request bodies stay in memory, never in a temporary file (Twisted's default spills
bodies over 100 kB to one, in plain text), capped at the site's ``max_body``: a
declared ``Content-Length`` over it is answered 413 before any of the body is read,
a chunked body is cut off with 413 the moment it passes it. A body counts in the
shared ``Budget`` while it arrives (the largest holders are evicted with 503 when the
daemon holds too much); answers count in a budget of their own while they are written,
and a pull that would pass it is answered 503 before its message is opened. A request line or headers
over 16 kB are answered 431, a request not whole within ``request_seconds`` of its
first byte 408, and a connection silent for ``idle_seconds`` is closed; each of these
answers closes the connection. No traceback is ever shown to a client.
"""

import io
import json

from twisted.logger import Logger
from twisted.web import http, resource, server

from gateway.errors import GatewayError
from gateway.transports import tls
from gateway.transports.guard import Budget

log = Logger(namespace="gatewayd.https")


class BoundedRequest(server.Request):
    """A request whose body is held in memory, capped at the site's ``max_body``, and
    counted in the site's Budget until the answer is written."""

    refused = processing = False
    budget = None
    held = 0

    def gotLength(self, length):
        self.content, self.budget = io.BytesIO(), self.channel.site.budget
        if length is not None and length > self.channel.site.max_body:
            self.requestHeaders.removeHeader(b"expect")      # no "100 Continue" after a 413
            self._refuse(413, "Payload Too Large", GatewayError(
                f"body larger than {self.channel.site.max_body} bytes",
                where=f"declared Content-Length {length}", code="E-TOO-LARGE"))

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.held += len(data)
        if self.held > self.channel.site.max_body:
            self._refuse(413, "Payload Too Large", GatewayError(
                f"body larger than {self.channel.site.max_body} bytes", where="chunked body",
                code="E-TOO-LARGE"))
            return
        self.content.write(data)
        self.budget.set(self, self.held)
        self.budget.relieve()

    def evictable(self) -> int:
        """Bytes that closing this request would free: its body while it arrives."""
        return 0 if self.processing or self.refused else self.held

    def evict(self, reason: str) -> None:
        self._refuse(503, "Service Unavailable", GatewayError(f"{reason}; send again later",
                                                              code="E-BUSY"))

    def process(self):
        if not self.refused:
            self.processing = True
            super().process()

    def finish(self):
        self._release()
        super().finish()

    def connectionLost(self, reason):
        self._release()
        super().connectionLost(reason)

    def hold(self, size: int) -> None:
        """Count an answer of ``size`` bytes being written, in the site's ``answers``
        budget (apart from incoming messages: unread answers cannot shut senders out)."""
        self.budget.set(self, 0)
        self.held, self.budget = size, self.channel.site.answers
        self.budget.set(self, size)

    def _release(self) -> None:
        if self.budget is not None:
            self.budget.set(self, 0)
        self.held = 0

    def _refuse(self, status: int, phrase: str, error: GatewayError) -> None:
        """Answer now, before the rest of the body is read, and close: nothing is stored."""
        self.refused, self.content = True, io.BytesIO()
        self._release()
        peer = tls.peer_identity(self.channel.transport)
        log.warn("HTTPS body from {peer} refused: {error}", peer=peer, error=str(error))
        self.channel.site.refused(peer, error)
        raw_answer(self.channel.transport, status, phrase, error)
        self.channel.loseConnection()


class Channel(http.HTTPChannel):
    """HTTP/1.1 with answers for oversize headers (431) and slow requests (408), and
    pipelined requests taken one a reactor turn and none while the client leaves our
    answers unread (Twisted would answer every request it has read at once, whatever
    the client reads)."""

    header_bytes = 0
    deadline = replay = None

    def dataReceived(self, data):
        if self.deadline is None:             # a request's first byte starts its clock
            self.deadline = self.callLater(self.site.request_seconds, self._too_slow)
        super().dataReceived(data)

    def lineReceived(self, line):
        self.header_bytes += len(line)
        if self.header_bytes > self.totalHeadersSize:
            return self.lineLengthExceeded(line)
        return super().lineReceived(line)

    def lineLengthExceeded(self, line):
        self._close_with(431, "Request Header Fields Too Large",
                         f"request line or headers longer than {self.totalHeadersSize} bytes")

    def allContentReceived(self):
        self._stop_clock()
        self.header_bytes = 0
        super().allContentReceived()

    def _too_slow(self):
        self.deadline = None
        self._close_with(408, "Request Timeout", "request not complete within "
                         f"{self.site.request_seconds} s (limits.frame_seconds)")

    def _close_with(self, status: int, phrase: str, why: str) -> None:
        """Answer ``status`` with a JSON error and close: the request is not read further."""
        log.warn("HTTPS connection from {peer} closed with {status}: {why}",
                     peer=tls.peer_identity(self.transport), status=status, why=why)
        self._stop_clock()
        raw_answer(self.transport, status, phrase, GatewayError(why, code=f"E-HTTP-{status}"))
        self.dataReceived = lambda data: None
        self.loseConnection()

    def _stop_clock(self):
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def requestDone(self, request):
        waiting = b"".join(self._dataBuffer)       # read while the request was handled
        self._dataBuffer = []                      # (Twisted would replay it at once)
        super().requestDone(request)
        if self.persistent and self.transport is not None:
            self._buffer = waiting + self._buffer   # unparsed, in the order it came
            if self._buffer:                        # the next request waits for a turn
                self.paused = True
                self._networkProducer.pauseProducing()
                self._replay_soon()

    def resumeProducing(self):
        """The client read our answers: go on with what it pipelined, if anything."""
        if not self.paused:
            return super().resumeProducing()
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()
        self._replay_soon()

    def _replay_soon(self) -> None:
        if self.paused and not self._waitingForTransport and self.replay is None:
            self.replay = self.callLater(0, self._replay_now)

    def _replay_now(self) -> None:
        self.replay = None
        if self._waitingForTransport:               # resumeProducing comes back here
            return
        self.paused = False
        self._networkProducer.resumeProducing()
        self.dataReceived(b"")

    def connectionLost(self, reason):
        self._stop_clock()
        if self.replay is not None and self.replay.active():
            self.replay.cancel()
        super().connectionLost(reason)


def raw_answer(transport, status: int, phrase: str, error: GatewayError) -> None:
    """Write a whole JSON error response straight to ``transport`` (outside any request)."""
    body = _json({"code": error.code, "message": error.message, "where": error.where})
    transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (status, phrase.encode(), len(body), body))


def bounded_site(root: resource.Resource, max_body: int, idle_seconds: float,
                 request_seconds: float, budget: Budget, refused=lambda peer, error: None):
    """A twisted.web Site with this module's bounds: request bodies in memory up to
    ``max_body`` bytes (0: none taken) and counted in ``budget``, headers 16 kB, a request
    whole within ``request_seconds``, idle connections closed; no tracebacks shown."""
    built = server.Site(root, requestFactory=BoundedRequest, timeout=idle_seconds)
    built.protocol = Channel
    built.displayTracebacks = False
    built.budget, built.max_body, built.refused = budget, max_body, refused
    built.answers = Budget(budget.limit)      # answers being written, apart
    built.request_seconds = request_seconds
    return built


def _json(data) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n"
